//! The `validate` command: reads the CA file and the token, runs the checks, prints the report,
//! and says why it did not pass (`cli.rs` maps that to the exit status: 1 a check failed, 64
//! bad usage such as an unreadable `--ca-file`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::tls::Roots;
use super::token::TokenText;
use super::{Options, run};

/// The audience Vault's role binds when none is given: TFE's default for Vault.
pub const DEFAULT_AUDIENCE: &str = "vault.workload.identity";
/// The time limit of each step (DNS, TCP, TLS, each HTTP exchange).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why `validate` did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// `--ca-file` cannot be read or holds no certificate.
    #[error("--ca-file {path}: {why}")]
    CaFile { path: String, why: String },
    /// `--token` cannot be read or is empty.
    #[error("--token {from}: {why}")]
    Token { from: String, why: String },
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The report was printed, and `failed` checks failed.
    #[error("validate: {failed} {} failed", if *failed == 1 { "check" } else { "checks" })]
    ChecksFailed { failed: usize },
}

/// What the command line asks `validate` for (built by `cli`).
#[derive(Debug, Clone)]
pub struct Request {
    pub issuer: String,
    pub ca_file: Option<PathBuf>,
    /// A token file, or `-` for standard input.
    pub token: Option<String>,
    pub audience: Option<String>,
    pub expect_unreachable: bool,
    /// The report as JSON instead of text.
    pub json: bool,
}

pub fn command(args: Request) -> Result<(), ValidateError> {
    let options = options(
        args.issuer,
        args.ca_file.as_deref(),
        args.token.as_deref(),
        args.audience,
        args.expect_unreachable,
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ValidateError::Runtime)?;
    let report = runtime.block_on(run(&options));
    match args.json {
        false => print!("{}", report.to_text()),
        true => println!("{}", report.to_json()),
    }
    if report.ok {
        return Ok(());
    }
    let failed = report.checks.iter().filter(|c| !c.ok && !c.skipped).count();
    Err(ValidateError::ChecksFailed { failed })
}

fn options(
    issuer: String,
    ca_file: Option<&Path>,
    token: Option<&str>,
    audience: Option<String>,
    expect_unreachable: bool,
) -> Result<Options, ValidateError> {
    let roots = match ca_file {
        Some(path) => read_roots(path)?,
        None => Roots::System,
    };
    Ok(Options {
        issuer,
        roots,
        token: token.map(read_token).transpose()?,
        audience: audience.unwrap_or_else(|| DEFAULT_AUDIENCE.to_owned()),
        expect_unreachable,
        timeout: TIMEOUT,
    })
}

fn read_roots(path: &Path) -> Result<Roots, ValidateError> {
    let error = |why: String| ValidateError::CaFile {
        path: path.display().to_string(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no PEM certificate found".into()));
    }
    Ok(Roots::File {
        path: path.display().to_string(),
        certs,
    })
}

/// The token from a file, or from stdin for `-`; surrounding whitespace removed.
fn read_token(from: &str) -> Result<TokenText, ValidateError> {
    let error = |why: String| ValidateError::Token {
        from: from.to_owned(),
        why,
    };
    let mut text = String::new();
    let read = match from {
        "-" => std::io::stdin().read_to_string(&mut text).map(|_| ()),
        path => std::fs::read_to_string(path).map(|t| text = t),
    };
    read.map_err(|e| error(e.to_string()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(error("empty".into()));
    }
    Ok(TokenText(text.to_owned()))
}
