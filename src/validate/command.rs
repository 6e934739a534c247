//! The `validate` command: reads the CA file and the token, runs the checks, prints the report
//! and turns the verdict into the exit status (0 every check passed, 1 a check failed, 64 bad
//! usage such as an unreadable `--ca-file`).

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::cli::{EXIT_FAILURE, EXIT_USAGE, Failure, OutputFormat, ValidateArgs};

use super::tls::Roots;
use super::token::TokenText;
use super::{Options, run};

/// The audience Vault's role binds when none is given: TFE's default for Vault.
pub const DEFAULT_AUDIENCE: &str = "vault.workload.identity";
/// The time limit of each step (DNS, TCP, TLS, each HTTP exchange).
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub fn command(args: ValidateArgs) -> Result<(), Failure> {
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
        .map_err(|e| failure(EXIT_FAILURE, format!("cannot start the runtime: {e}")))?;
    let report = runtime.block_on(run(&options));
    match args.format {
        OutputFormat::Text => print!("{}", report.to_text()),
        OutputFormat::Json => println!("{}", report.to_json()),
    }
    if report.ok {
        return Ok(());
    }
    let failed = report.checks.iter().filter(|c| !c.ok && !c.skipped).count();
    Err(failure(
        EXIT_FAILURE,
        format!("validate: {failed} checks failed"),
    ))
}

fn options(
    issuer: String,
    ca_file: Option<&Path>,
    token: Option<&str>,
    audience: Option<String>,
    expect_unreachable: bool,
) -> Result<Options, Failure> {
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

fn read_roots(path: &Path) -> Result<Roots, Failure> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| failure(EXIT_USAGE, format!("--ca-file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(failure(
            EXIT_USAGE,
            format!("--ca-file {}: no PEM certificate found", path.display()),
        ));
    }
    Ok(Roots::File {
        path: path.display().to_string(),
        certs,
    })
}

/// The token from a file, or from stdin for `-`; surrounding whitespace removed.
fn read_token(source: &str) -> Result<TokenText, Failure> {
    let mut text = String::new();
    let read = match source {
        "-" => std::io::stdin().read_to_string(&mut text).map(|_| ()),
        path => std::fs::read_to_string(path).map(|t| text = t),
    };
    read.map_err(|e| failure(EXIT_USAGE, format!("--token {source}: {e}")))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(failure(EXIT_USAGE, format!("--token {source}: empty")));
    }
    Ok(TokenText(text.to_owned()))
}

fn failure(code: u8, message: String) -> Failure {
    Failure { code, message }
}
