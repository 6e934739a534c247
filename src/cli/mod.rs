//! The commands of docs/reference.md §1: parsing, dispatch and exit statuses (0 success, 1 failure, 64 bad
//! usage or configuration; `run` adds 69, 73, 76, 77, 126 and 127 for what stops it before COMMAND,
//! 70 when COMMAND succeeded but its credentials could not be revoked, and otherwise exits with
//! COMMAND's status). Each command is a short function over the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError};
use crate::http::auth::{self, Scope};
use crate::keys::SystemClock;
use crate::keys::manager::ManagerError;
use crate::keys::store::StoreError;
use crate::run::RunError;
use crate::service::{self, StartError};
use crate::token::claims::FieldError;
use crate::token::kinds::InputError;
use crate::validate::command::ValidateError;

mod issue;
mod keys;
mod run;

pub use issue::IssueArgs;
pub use run::RunArgs;

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 64;
/// `run`: the API cannot be reached or failed, or Vault failed during the exchange.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// `run`: COMMAND exited 0 but the run's Vault tokens could not be revoked.
pub const EXIT_NOT_REVOKED: u8 = 70;
/// `run`: the credential files cannot be written.
pub const EXIT_CANT_CREATE: u8 = 73;
/// `run`: the API answered with something `run` refuses to pass on.
pub const EXIT_PROTOCOL: u8 = 76;
/// `run`: the API refused the caller's token or the Vault address.
pub const EXIT_NO_PERMISSION: u8 = 77;
/// `run`: COMMAND exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// `run`: COMMAND cannot be found.
pub const EXIT_NOT_FOUND: u8 = 127;

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
    /// Check discovery, keys and (optionally) a token from where Vault runs.
    Validate(ValidateArgs),
    /// Run COMMAND with a run's Vault-backed dynamic credentials, as TFE's agent does.
    Run(Box<RunArgs>),
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
        /// A glob of the `sub` values this caller may obtain, with Vault's glob meaning (`*`
        /// matches any run of characters, `:` included); repeat for more. Without it, a caller
        /// with the tokens or credentials scope may obtain any organization's tokens.
        #[arg(long = "sub", value_name = "GLOB")]
        subs: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The issuer URL exactly as Vault is given it (oidc_discovery_url and bound_issuer).
    #[arg(long)]
    pub issuer: String,
    /// PEM CA certificate(s) for the discovery listener, as Vault's oidc_discovery_ca_pem
    /// (default: this host's trust store).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// A run identity token to check: a file, or - for stdin. It is never printed.
    #[arg(long, conflicts_with = "expect_unreachable")]
    pub token: Option<String>,
    /// The audience Vault's role expects (default vault.workload.identity).
    #[arg(long, requires = "token")]
    pub audience: Option<String>,
    /// Pass only when the discovery listener cannot be reached from here.
    #[arg(long)]
    pub expect_unreachable: bool,
    #[arg(long, default_value = "text")]
    pub format: OutputFormat,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    crate::telemetry::init_logging(cli.log_format == LogFormat::Json);
    let result = match cli.command {
        Command::Serve(c) => serve(c),
        Command::CheckConfig(c) => check_config(c),
        Command::Keys(KeysCommand::List { config, format }) => keys::list(config, format),
        Command::Keys(KeysCommand::Rotate { config, force }) => keys::rotate(config, force),
        Command::Token(command) => match *command {
            TokenCommand::Issue(args) => issue::token_issue(args),
        },
        Command::ApiToken(ApiTokenCommand::New { name, scopes, subs }) => {
            api_token_new(&name, &scopes, &subs)
        }
        Command::Validate(args) => validate(args),
        Command::Run(args) => match run::run(*args) {
            Ok(status) => return ExitCode::from(status),
            Err(failure) => Err(failure),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("tfe-oidc: {message}");
            ExitCode::from(code)
        }
    }
}

fn validate(args: ValidateArgs) -> Result<(), Failure> {
    let request = crate::validate::command::Request {
        issuer: args.issuer,
        ca_file: args.ca_file,
        token: args.token,
        audience: args.audience,
        expect_unreachable: args.expect_unreachable,
        json: args.format == OutputFormat::Json,
    };
    crate::validate::command::command(request).map_err(Failure::from)
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

// The one mapping from the library's errors to exit statuses: 64 for what the operator wrote
// (configuration, flags), 1 for what failed while acting on it.

impl From<StartError> for Failure {
    fn from(e: StartError) -> Failure {
        match e {
            StartError::Config(_) => Failure::usage(e),
            StartError::Keys(_)
            | StartError::Bind { .. }
            | StartError::Audit { .. }
            | StartError::DevelopmentToken { .. }
            | StartError::Push(_)
            | StartError::Task(_) => Failure::failed(e),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Failure {
        Failure::usage(e)
    }
}

impl From<InputError> for Failure {
    fn from(e: InputError) -> Failure {
        Failure::usage(e)
    }
}

impl From<FieldError> for Failure {
    fn from(e: FieldError) -> Failure {
        Failure::usage(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::failed(e)
    }
}

impl From<ManagerError> for Failure {
    fn from(e: ManagerError) -> Failure {
        Failure::failed(e)
    }
}

impl From<ValidateError> for Failure {
    fn from(e: ValidateError) -> Failure {
        match e {
            ValidateError::CaFile { .. } | ValidateError::Token { .. } => Failure::usage(e),
            ValidateError::Runtime(_) | ValidateError::ChecksFailed { .. } => Failure::failed(e),
        }
    }
}

impl From<RunError> for Failure {
    fn from(e: RunError) -> Failure {
        let code = match &e {
            RunError::Usage(_) | RunError::Invalid(_) => EXIT_USAGE,
            RunError::Unavailable(_) | RunError::Vault(_) => EXIT_UNAVAILABLE,
            RunError::Refused { .. } => EXIT_NO_PERMISSION,
            RunError::Files(_) => EXIT_CANT_CREATE,
            RunError::Answer(_) => EXIT_PROTOCOL,
            RunError::NotRevoked(_) => EXIT_NOT_REVOKED,
            RunError::Spawn { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_NOT_EXECUTABLE,
            },
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

pub(super) fn load(arg: &ConfigArg) -> Result<Config, Failure> {
    Ok(Config::load(arg.config.as_deref())?)
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
        crate::systemd::notify("READY=1");
        signals.serve(&running).await;
        crate::systemd::notify("STOPPING=1");
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
    /// Caught and never acted on: past a file-size limit (`ulimit -f`) a write then fails with
    /// EFBIG, which the audit trail reports (503), instead of the signal killing the process.
    _xfsz: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let handler = |kind| signal(kind).expect("a signal handler can be installed");
        let xfsz = SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw());
        Signals {
            term: handler(SignalKind::terminate()),
            int: handler(SignalKind::interrupt()),
            hup: handler(SignalKind::hangup()),
            _xfsz: handler(xfsz),
        }
    }

    /// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
    async fn serve(mut self, running: &service::Running) {
        loop {
            tokio::select! {
                _ = self.int.recv() => return,
                _ = self.term.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the API tokens file and the TLS files, reopening the audit file");
                    // Off the signal loop: a file that blocks on open (a FIFO) must not keep
                    // SIGTERM from being heard.
                    let reload = running.reloader();
                    tokio::task::spawn_blocking(move || reload.reload());
                }
            }
        }
    }
}

fn check_config(arg: ConfigArg) -> Result<(), Failure> {
    let config = load(&arg)?;
    service::tls_configs(&config)?;
    if let Some(tokens) = service::tokens_file(&config)? {
        for name in tokens.unbound_signers() {
            eprintln!(
                "warning: api.tokens_file: caller {name:?} has no sub= binding, so its token may obtain tokens and credentials for every organization and workspace; add sub=GLOB (see docs/threat-model.md)"
            );
        }
    }
    for warning in config.federation.iter().filter_map(|r| r.warning()) {
        eprintln!("warning: {warning}");
    }
    crate::push::read_files(&config.push)?;
    crate::http::federation::Federation::new(&config.federation)?;
    print!("{}", crate::config::describe(&config));
    Ok(())
}

fn api_token_new(name: &str, scopes: &str, subs: &[String]) -> Result<(), Failure> {
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
    for glob in subs {
        crate::http::policy::check_glob(glob)
            .map_err(|e| Failure::usage(format!("--sub {glob:?}: {e}")))?;
    }
    let token = auth::new_token();
    let line = auth::bound_tokens_file_line(&token, name, &scopes, subs);
    // stdout holds exactly two lines, the token then the tokens-file line, each ready to paste
    // or to take with `head -1` / `tail -1`; what they are goes to stderr.
    eprintln!(
        "line 1: the bearer token of caller {name:?}; hand it to the caller, it is stored nowhere\n\
         line 2: append it to the file named by api.tokens_file, then `kill -HUP` the server"
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}\n{line}", token.0);
    Ok(())
}
