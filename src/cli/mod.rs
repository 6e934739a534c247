//! The commands of SPEC §2: parsing, dispatch and exit statuses (0 success, 1 failure, 64 bad
//! usage or configuration). Each command is a short function over the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::http::auth::{self, Scope};
use crate::keys::manager::KeyManager;
use crate::keys::store::read_unlocked;
use crate::keys::{KeySet, SystemClock, listing};
use crate::service::{self, StartError};

mod issue;

pub use issue::IssueArgs;

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "tfe-oidc",
    version,
    about = "An OpenID Connect issuer of Terraform Enterprise run identity tokens for Vault"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "TFE_OIDC_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file (TOML); without one, the embedded defaults.
    #[arg(long, env = "TFE_OIDC_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: both listeners and the key rotator.
    Serve(ConfigArg),
    /// Validate the configuration and print the effective settings.
    CheckConfig(ConfigArg),
    /// Inspect or rotate the signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Mint tokens from the key store.
    #[command(subcommand)]
    Token(Box<TokenCommand>),
    /// Manage API bearer tokens.
    #[command(subcommand, name = "api-token")]
    ApiToken(ApiTokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// The key set: kid, state and lifecycle times.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, default_value = "text")]
        format: OutputFormat,
    },
    /// Rotate now, offline (refused while a server holds the key store).
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
        /// Rotate even if the next key was published less than jwks_max_age ago.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint one identity token (workspace run, module test or Stacks deployment) and print it.
    Issue(IssueArgs),
}

#[derive(Debug, Subcommand)]
pub enum ApiTokenCommand {
    /// Print a fresh bearer token and the line to add to the tokens file.
    New {
        /// The caller's name, as audit events will show it.
        #[arg(long, default_value = "tfe")]
        name: String,
        /// Comma-separated scopes: tokens, credentials, keys.
        #[arg(long, default_value = "tokens,credentials,keys")]
        scopes: String,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    crate::telemetry::init_logging(cli.log_format == LogFormat::Json);
    let result = match cli.command {
        Command::Serve(c) => serve(c),
        Command::CheckConfig(c) => check_config(c),
        Command::Keys(KeysCommand::List { config, format }) => keys_list(config, format),
        Command::Keys(KeysCommand::Rotate { config, force }) => keys_rotate(config, force),
        Command::Token(command) => match *command {
            TokenCommand::Issue(args) => issue::token_issue(args),
        },
        Command::ApiToken(ApiTokenCommand::New { name, scopes }) => api_token_new(&name, &scopes),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("tfe-oidc: {message}");
            ExitCode::from(code)
        }
    }
}

/// A command's failure: its exit status and what to tell the operator.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub(super) fn usage(message: impl ToString) -> Failure {
        Failure {
            code: EXIT_USAGE,
            message: message.to_string(),
        }
    }

    pub(super) fn failed(message: impl ToString) -> Failure {
        Failure {
            code: EXIT_FAILURE,
            message: message.to_string(),
        }
    }
}

impl From<StartError> for Failure {
    fn from(e: StartError) -> Failure {
        match e {
            StartError::Config(_) => Failure::usage(e),
            _ => Failure::failed(e),
        }
    }
}

pub(super) fn load(arg: &ConfigArg) -> Result<Config, Failure> {
    Config::load(arg.config.as_deref()).map_err(Failure::usage)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("cannot start the runtime: {e}")))
}

fn serve(arg: ConfigArg) -> Result<(), Failure> {
    let config = load(&arg)?;
    runtime()?.block_on(async {
        // Handlers first: a SIGHUP while starting must not kill the process.
        let signals = Signals::new();
        let running = service::start(&config, Arc::new(SystemClock)).await?;
        signals.serve(&running).await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        running.shutdown().await;
        Ok(())
    })
}

/// The signals `serve` acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let handler = |kind| signal(kind).expect("a signal handler can be installed");
        Signals {
            term: handler(SignalKind::terminate()),
            int: handler(SignalKind::interrupt()),
            hup: handler(SignalKind::hangup()),
        }
    }

    /// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
    async fn serve(mut self, running: &service::Running) {
        loop {
            tokio::select! {
                _ = self.int.recv() => return,
                _ = self.term.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the API tokens file and the TLS files");
                    running.reload();
                }
            }
        }
    }
}

fn check_config(arg: ConfigArg) -> Result<(), Failure> {
    let config = load(&arg)?;
    service::tls_configs(&config).map_err(Failure::usage)?;
    service::tokens_file(&config).map_err(Failure::usage)?;
    print!("{}", crate::config::describe(&config));
    Ok(())
}

fn keys_list(arg: ConfigArg, format: OutputFormat) -> Result<(), Failure> {
    let config = load(&arg)?;
    let loaded = read_unlocked(&config.keys.dir).map_err(Failure::failed)?;
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&listing(&loaded.set)).expect("json")
        ),
        OutputFormat::Text => print!("{}", key_table(&loaded.set)),
    }
    Ok(())
}

fn keys_rotate(arg: ConfigArg, force: bool) -> Result<(), Failure> {
    let config = load(&arg)?;
    let store = service::open_store(&config).map_err(Failure::failed)?;
    let manager = KeyManager::start(store, Arc::new(SystemClock), service::policy(&config))
        .map_err(Failure::failed)?;
    let set = manager.rotate(force).map_err(Failure::failed)?;
    print!("{}", key_table(&set));
    Ok(())
}

fn api_token_new(name: &str, scopes: &str) -> Result<(), Failure> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Failure::usage(
            "--name must be a non-empty word without spaces",
        ));
    }
    let scopes: Vec<Scope> = scopes
        .split(',')
        .map(|s| {
            Scope::ALL
                .into_iter()
                .find(|x| x.as_str() == s.trim())
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "unknown scope {s:?}: use tokens, credentials or keys"
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    let token = auth::new_token();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "token: {}", token.0);
    let _ = writeln!(
        out,
        "tokens file line: {}",
        auth::tokens_file_line(&token, name, &scopes)
    );
    Ok(())
}

fn key_table(set: &KeySet) -> String {
    let time = |t: Option<u64>| match t {
        Some(t) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
        )
        .to_string(),
        None => "-".into(),
    };
    let mut out = format!(
        "{:<43}  {:<7}  {:<20}  {:<20}  {:<20}  {:<20}\n",
        "KID", "STATE", "CREATED", "ACTIVATED", "RETIRED", "VERIFY_UNTIL"
    );
    for k in &set.keys {
        out.push_str(&format!(
            "{:<43}  {:<7}  {:<20}  {:<20}  {:<20}  {:<20}\n",
            k.kid.as_str(),
            k.state.as_str(),
            time(Some(k.created_at)),
            time(k.activated_at),
            time(k.retired_at),
            time(k.verify_until)
        ));
    }
    out
}
