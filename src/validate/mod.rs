//! `tfe-oidc validate`: checks, from where it runs (normally Vault's host), that the issuer's
//! discovery listener is reachable and serves what Vault needs; or, with `--expect-unreachable`,
//! that it cannot be reached from here.
//!
//! Owns the check list, its order and dependencies, and the verdict. Reads the documents with
//! [`crate::discovery`]'s types and judges tokens with [`crate::token::claims`]'s rules; never
//! reads a configuration file or the key store.
//!
//! - `target.rs`: the issuer URL's form and the origin it names.
//! - `net.rs`: DNS, TCP and TLS, each a check with its own diagnosis; `tls.rs`: the roots, the
//!   client configuration and what a failed handshake means; `pinned.rs`: certificate
//!   verification that, like Vault, also accepts the server's own certificate as the CA file.
//! - `fetch.rs`: one HTTP/1.1 GET over a connection `net.rs` made.
//! - `documents.rs`: the discovery document and the JWKS. `clock.rs`: the `Date` comparison.
//! - `token.rs`: `--token` against the JWKS and TFE's claim form.
//! - `report.rs`: checks, the report, its text and JSON renderings.
//! - `command.rs`: the command line: arguments in, report out, exit status.

mod clock;
pub mod command;
mod documents;
mod fetch;
pub mod net;
mod pinned;
pub mod report;
mod target;
pub mod tls;
pub mod token;

use std::time::Duration;

use crate::discovery::JwkSet;
use fetch::FetchError;
use net::{Conn, DialError, Dialer};
use report::{Check, Report};
use tls::Roots;
use token::TokenText;

/// What to validate and how.
#[derive(Debug)]
pub struct Options {
    /// The issuer URL exactly as Vault is given it.
    pub issuer: String,
    pub roots: Roots,
    pub token: Option<TokenText>,
    /// The `aud` Vault's role expects.
    pub audience: String,
    pub expect_unreachable: bool,
    /// For each of DNS, TCP connect, TLS handshake and each HTTP exchange.
    pub timeout: Duration,
}

/// The network checks after `issuer_url`, in order.
const NETWORK: &[&str] = &[
    "dns",
    "tcp",
    "tls",
    "discovery",
    "discovery_issuer",
    "jwks_uri",
    "clock",
    "jwks",
    "jwks_keys",
];

/// Runs every check and returns the report.
pub async fn run(options: &Options) -> Report {
    let mut report = Report::new(&options.issuer, options.expect_unreachable);
    let (check, target) = target::check(&options.issuer);
    report.push(check);
    if options.expect_unreachable {
        unreachable_checks(options, target, &mut report).await;
        return report;
    }
    let jwks = match target {
        Some(target) => network_checks(options, target, &mut report).await,
        None => {
            report.skip(NETWORK, target::NAME);
            None
        }
    };
    if let Some(token) = &options.token {
        let jwks = jwks.as_ref().ok_or(first_failure(&report));
        token::check(token, jwks, &options.issuer, &options.audience, &mut report);
    }
    report
}

/// Why the JWKS is missing: the first network check that failed (not skipped), or the issuer
/// URL when it named no host.
fn first_failure(report: &Report) -> &'static str {
    let failed = |c: &&Check| !c.ok && !c.skipped;
    let checks = report.checks.iter();
    match checks.filter(failed).find(|c| NETWORK.contains(&c.name)) {
        Some(check) => check.name,
        None => target::NAME,
    }
}

/// DNS through clock; the JWKS when every key is usable.
async fn network_checks(
    options: &Options,
    target: target::Target,
    report: &mut Report,
) -> Option<JwkSet> {
    let (dialer, conn) = match connect(options, &target, report).await {
        Ok(pair) => pair,
        Err(failed) => {
            let rest = &NETWORK[NETWORK.iter().position(|n| *n == failed)? + 1..];
            report.skip(rest, failed);
            return None;
        }
    };
    let path = fetch_discovery(options, &dialer, conn, report).await?;
    fetch_jwks(options, &dialer, &path, report).await
}

/// `dns`, `tcp` and `tls`; the name of the check that failed otherwise.
async fn connect(
    options: &Options,
    target: &target::Target,
    report: &mut Report,
) -> Result<(Dialer, Conn), &'static str> {
    let (check, addrs) = net::resolve(target, options.timeout).await;
    report.push(check);
    let addrs = addrs.ok_or("dns")?;
    let tcp = net::connect(&addrs, options.timeout).await;
    report.push(net::tcp_check(&tcp, target));
    let (stream, addr) = tcp.map_err(|_| "tcp")?;
    let dialer = Dialer::new(target, addr, &options.roots, options.timeout).map_err(|why| {
        let fix = "pass a PEM file with the CA certificate as --ca-file";
        report.push(Check::fail("tls", why, fix));
        "tls"
    })?;
    let conn = dialer.secure(stream).await;
    report.push(dialer.tls_check(&conn));
    Ok((dialer, conn.map_err(|_| "tls")?))
}

/// `discovery`, `discovery_issuer`, `jwks_uri` and `clock`; the JWKS path when it is usable.
async fn fetch_discovery(
    options: &Options,
    dialer: &Dialer,
    conn: Conn,
    report: &mut Report,
) -> Option<String> {
    let target = &dialer.target;
    let path = target.discovery_path();
    let mut answer = fetch::get(conn, &target.authority, &path, options.timeout).await;
    if !target.https
        && matches!(answer, Err(FetchError::Http(_) | FetchError::Closed))
        && dialer.speaks_tls().await
    {
        answer = Err(FetchError::SpeaksTls);
    }
    let jwks_path = documents::check_discovery(answer.as_ref(), &options.issuer, target, report);
    match &answer {
        Ok(answer) => report.push(clock::check(answer)),
        Err(_) => report.skip(&["clock"], "discovery"),
    }
    if jwks_path.is_none() {
        let failed = ["discovery", "jwks_uri"]
            .into_iter()
            .find(|n| !report.passed(n));
        report.skip(&["jwks", "jwks_keys"], failed.unwrap_or("discovery"));
    }
    jwks_path
}

async fn fetch_jwks(
    options: &Options,
    dialer: &Dialer,
    path: &str,
    report: &mut Report,
) -> Option<JwkSet> {
    let url = format!("{}{path}", dialer.target.origin());
    let answer = match dialer.dial().await {
        Ok(conn) => fetch::get(conn, &dialer.target.authority, path, options.timeout).await,
        Err(e) => Err(FetchError::Http(format!("cannot connect again: {e}"))),
    };
    documents::check_jwks(answer.as_ref(), &url, report)
}

/// `--expect-unreachable`: one `unreachable` check that passes when no connection can be made
/// or the listener closes it before any answer.
async fn unreachable_checks(
    options: &Options,
    target: Option<target::Target>,
    report: &mut Report,
) {
    let Some(target) = target else {
        return report.skip(&["unreachable"], target::NAME);
    };
    report.push(match probe(options, &target).await {
        Ok(how) => Check::pass("unreachable", how),
        Err(what) => Check::fail(
            "unreachable",
            format!("{what} from here"),
            "this host must not reach the discovery listener: restrict discovery.allow to Vault's addresses (and firewall the port)",
        ),
    });
}

/// How the attempt was stopped, or what answered.
async fn probe(options: &Options, target: &target::Target) -> Result<String, String> {
    let (_, addrs) = net::resolve(target, options.timeout).await;
    let Some(addrs) = addrs else {
        return Ok(format!(
            "{} does not resolve here: no connection possible",
            target.host
        ));
    };
    let (stream, addr) = match net::connect(&addrs, options.timeout).await {
        Ok(pair) => pair,
        Err(e) => return Ok(format!("no connection: {e}")),
    };
    let dialer = Dialer::new(target, addr, &options.roots, options.timeout)
        .map_err(|e| format!("TCP connects to {addr} (and TLS cannot be tried: {e})"))?;
    let conn = match dialer.secure(stream).await {
        Ok(conn) => conn,
        Err(DialError::Closed) => {
            return Ok(format!("{addr} closed the connection before any answer"));
        }
        Err(e) => return Err(format!("{addr} answered the TLS handshake ({e})")),
    };
    let path = target.discovery_path();
    match fetch::get(conn, &target.authority, &path, options.timeout).await {
        Err(FetchError::Closed) => Ok(format!("{addr} closed the connection before any answer")),
        Err(FetchError::TimedOut(t)) => {
            Ok(format!("{addr} accepted but never answered within {t:?}"))
        }
        Err(e) => Err(format!("{addr} answered ({e})")),
        Ok(answer) => Err(format!("discovery answered {}", answer.status)),
    }
}
