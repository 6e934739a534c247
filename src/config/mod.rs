//! The validated configuration (SPEC §3).
//!
//! `Config::load` reads the TOML file (or none: the embedded defaults), applies `TFE_OIDC_*`
//! overrides, and checks every rule, returning all problems at once. Everything after this module
//! trusts a `Config`. Parsing text into typed values is `raw.rs`'s job, the forms of single values
//! (issuer, CIDR, glob) are `forms.rs`'s, and `describe.rs` renders the effective settings; this
//! module owns defaults and the rules between keys. It does not open sockets or read keys.

mod describe;
mod forms;
pub mod raw;

pub use describe::{describe, short_duration};
use forms::parse_cidr;
pub use forms::{check_issuer, glob_match, is_loopback};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::token::claims::Audience;
use raw::Raw;

/// One thing wrong with the configuration, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: &str, message: impl Into<String>) -> Problem {
        Problem {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<Problem>);

/// TLS files of one listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by this CA.
    pub client_ca: Option<PathBuf>,
}

/// One listening socket and how it is protected.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// Peers allowed to connect; empty means any peer that can reach the address.
    pub allow: Vec<IpNet>,
    pub insecure_http: bool,
    /// Connections served at once; `None`: half of the process's file descriptors, at most 16384.
    pub max_connections: Option<usize>,
}

/// Rules for the tokens this issuer signs.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub default_audience: Audience,
    /// Allowed `aud` patterns; `*` matches any run of characters.
    pub audiences: Vec<String>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl TokenPolicy {
    /// Whether `audience` matches one of the allowed patterns.
    pub fn allows(&self, audience: &str) -> bool {
        self.audiences
            .iter()
            .any(|pattern| glob_match(pattern, audience))
    }
}

/// Which key store holds the signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    File,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub store: StoreKind,
    pub dir: PathBuf,
    pub rsa_bits: usize,
    pub rotation_period: Duration,
}

#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    pub vault_timeout: Duration,
    pub allowed_vault_addrs: Vec<String>,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `iss` of every token and `issuer` of the discovery document, byte for byte.
    pub issuer: String,
    pub discovery: ListenerConfig,
    pub jwks_max_age: Duration,
    pub api: ListenerConfig,
    pub tokens_file: Option<PathBuf>,
    pub max_body: usize,
    pub tokens: TokenPolicy,
    pub keys: KeysConfig,
    pub audit_path: Option<PathBuf>,
    pub exchange: ExchangeConfig,
}

const DEFAULT_AUDIENCES: &[&str] = &[
    "vault.workload.identity",
    "aws.workload.identity",
    "api://AzureADTokenExchange",
    "//iam.googleapis.com/*",
];

impl Config {
    /// Loads `file` (or the embedded defaults when `None`) with the process environment applied.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                ConfigError(vec![Problem::new(
                    "(file)",
                    format!("cannot read {}: {e}", path.display()),
                )])
            })?,
            None => String::new(),
        };
        let env: Vec<(String, String)> = std::env::vars().collect();
        Config::from_parts(&text, &env, file.and_then(Path::parent))
    }

    /// Builds a configuration from TOML text and environment pairs. Relative paths are taken
    /// relative to the working directory (like every other Unix tool), `_base` is kept for messages.
    pub fn from_parts(
        toml_text: &str,
        env: &[(String, String)],
        _base: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let raw = Raw::parse(toml_text, env, &mut problems);
        let config = build(&raw, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError(problems)),
        }
    }
}

fn build(raw: &Raw, problems: &mut Vec<Problem>) -> Option<Config> {
    let discovery = listener(raw, "discovery", "127.0.0.1:8443", problems);
    let api = listener(raw, "api", "127.0.0.1:8080", problems);
    let tokens = token_policy(raw, problems);
    let keys = keys(raw, problems);
    let jwks_max_age = raw
        .duration("discovery.jwks_max_age")
        .unwrap_or(Duration::from_secs(300));
    let max_body = raw.size("api.max_body").unwrap_or(64 * 1024);
    if max_body == 0 || max_body > 16 << 20 {
        problems.push(Problem::new("api.max_body", "must be between 1B and 16MiB"));
    }
    let (discovery, api, tokens, keys) = (discovery?, api?, tokens?, keys?);
    if discovery.listen == api.listen && discovery.listen.port() != 0 {
        problems.push(Problem::new(
            "api.listen",
            "must differ from discovery.listen",
        ));
    }
    if jwks_max_age.is_zero() || jwks_max_age > keys.rotation_period / 4 {
        problems.push(Problem::new(
            "discovery.jwks_max_age",
            format!(
                "must be more than 0 and at most rotation_period / 4 ({}), so that a new key is fetched long before it signs",
                humantime::format_duration(keys.rotation_period / 4)
            ),
        ));
    }
    let issuer = issuer(raw, &discovery, problems)?;
    Some(Config {
        issuer,
        discovery,
        jwks_max_age,
        api,
        tokens_file: raw.str("api.tokens_file").map(PathBuf::from),
        max_body: max_body as usize,
        tokens,
        keys,
        audit_path: raw.str("audit.path").map(PathBuf::from),
        exchange: ExchangeConfig {
            vault_timeout: raw
                .duration("exchange.vault_timeout")
                .unwrap_or(Duration::from_secs(60)),
            allowed_vault_addrs: raw
                .list("exchange.allowed_vault_addrs")
                .unwrap_or_default()
                .to_vec(),
        },
    })
}

fn listener(
    raw: &Raw,
    section: &str,
    default: &str,
    problems: &mut Vec<Problem>,
) -> Option<ListenerConfig> {
    let key = |name: &str| format!("{section}.{name}");
    let text = raw.str(&key("listen")).unwrap_or(default);
    let listen = match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(Problem::new(
                &key("listen"),
                format!("{text:?} is not an address:port such as 127.0.0.1:8443"),
            ));
            None
        }
    };
    let tls = tls_files(raw, section, problems);
    let allow = raw
        .list(&key("allow"))
        .unwrap_or_default()
        .iter()
        .filter_map(|item| {
            parse_cidr(item)
                .map_err(|m| problems.push(Problem::new(&key("allow"), m)))
                .ok()
        })
        .collect();
    let insecure_http = raw.bool(&key("insecure_http")).unwrap_or(false);
    let max_connections = raw.int(&key("max_connections"));
    if max_connections.is_some_and(|n| !(1..=1_000_000).contains(&n)) {
        problems.push(Problem::new(
            &key("max_connections"),
            "must be between 1 and 1000000",
        ));
    }
    let listen = listen?;
    if tls.is_none() && !is_loopback(listen.ip()) && !insecure_http {
        problems.push(Problem::new(
            &key("listen"),
            format!(
                "{listen} is not a loopback address and the listener has no TLS: set {0}.tls_cert and {0}.tls_key, or {0}.insecure_http = true if the network is trusted",
                section
            ),
        ));
    }
    Some(ListenerConfig {
        listen,
        tls,
        allow,
        insecure_http,
        max_connections: max_connections.map(|n| n as usize),
    })
}

fn tls_files(raw: &Raw, section: &str, problems: &mut Vec<Problem>) -> Option<TlsFiles> {
    let key = |name: &str| format!("{section}.{name}");
    let cert = raw.str(&key("tls_cert")).map(PathBuf::from);
    let tls_key = raw.str(&key("tls_key")).map(PathBuf::from);
    let client_ca = raw.str(&key("client_ca")).map(PathBuf::from);
    for (name, path) in [
        ("tls_cert", &cert),
        ("tls_key", &tls_key),
        ("client_ca", &client_ca),
    ] {
        if let Some(path) = path
            && let Err(e) = std::fs::metadata(path)
        {
            problems.push(Problem::new(
                &key(name),
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    }
    match (cert, tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca,
        }),
        (None, None) => {
            if client_ca.is_some() {
                problems.push(Problem::new(
                    &key("client_ca"),
                    "needs tls_cert and tls_key: client certificates are a TLS feature",
                ));
            }
            None
        }
        (Some(_), None) => {
            problems.push(Problem::new(
                &key("tls_key"),
                "is required when tls_cert is set",
            ));
            None
        }
        (None, Some(_)) => {
            problems.push(Problem::new(
                &key("tls_cert"),
                "is required when tls_key is set",
            ));
            None
        }
    }
}

fn token_policy(raw: &Raw, problems: &mut Vec<Problem>) -> Option<TokenPolicy> {
    let audiences: Vec<String> = match raw.list("tokens.audiences") {
        Some(list) => list.to_vec(),
        None => DEFAULT_AUDIENCES.iter().map(|s| s.to_string()).collect(),
    };
    if audiences.is_empty() {
        problems.push(Problem::new(
            "tokens.audiences",
            "must list at least one audience",
        ));
    }
    let default_text = raw
        .str("tokens.default_audience")
        .unwrap_or("vault.workload.identity");
    let default_audience = match Audience::parse(default_text) {
        Ok(aud) => Some(aud),
        Err(why) => {
            problems.push(Problem::new("tokens.default_audience", why));
            None
        }
    };
    let default_ttl = raw
        .duration("tokens.default_ttl")
        .unwrap_or(Duration::from_secs(2 * 3600));
    let max_ttl = raw
        .duration("tokens.max_ttl")
        .unwrap_or(Duration::from_secs(24 * 3600));
    if default_ttl < Duration::from_secs(1) {
        problems.push(Problem::new("tokens.default_ttl", "must be at least 1s"));
    }
    if default_ttl > max_ttl {
        problems.push(Problem::new(
            "tokens.default_ttl",
            "must not exceed tokens.max_ttl",
        ));
    }
    let policy = TokenPolicy {
        default_audience: default_audience?,
        audiences,
        default_ttl,
        max_ttl,
    };
    if !policy.allows(policy.default_audience.as_str()) {
        problems.push(Problem::new(
            "tokens.default_audience",
            "must match one of tokens.audiences",
        ));
    }
    Some(policy)
}

fn keys(raw: &Raw, problems: &mut Vec<Problem>) -> Option<KeysConfig> {
    let store = match raw.str("keys.store").unwrap_or("file") {
        "file" => Some(StoreKind::File),
        other => {
            problems.push(Problem::new(
                "keys.store",
                format!("{other:?} is not supported by this build (use \"file\"; the Vault transit store is not built yet)"),
            ));
            None
        }
    };
    let rsa_bits = raw.int("keys.rsa_bits").unwrap_or(2048);
    if ![2048, 3072, 4096].contains(&rsa_bits) {
        problems.push(Problem::new("keys.rsa_bits", "must be 2048, 3072 or 4096"));
    }
    let rotation_period = raw
        .duration("keys.rotation_period")
        .unwrap_or(Duration::from_secs(24 * 3600));
    if rotation_period < Duration::from_secs(4) {
        problems.push(Problem::new("keys.rotation_period", "must be at least 4s"));
    }
    let dir = raw.str("keys.dir").unwrap_or("keys");
    if dir.is_empty() {
        problems.push(Problem::new("keys.dir", "must not be empty"));
    }
    Some(KeysConfig {
        store: store?,
        dir: PathBuf::from(dir),
        rsa_bits: rsa_bits as usize,
        rotation_period,
    })
}

fn issuer(raw: &Raw, discovery: &ListenerConfig, problems: &mut Vec<Problem>) -> Option<String> {
    let on_loopback = is_loopback(discovery.listen.ip());
    let Some(text) = raw.str("issuer") else {
        if on_loopback {
            let scheme = if discovery.tls.is_some() {
                "https"
            } else {
                "http"
            };
            return Some(format!("{scheme}://{}", discovery.listen));
        }
        problems.push(Problem::new("issuer", "is required when the discovery listener is not on loopback (e.g. \"https://tfe.example.com\")"));
        return None;
    };
    match check_issuer(text) {
        Err(why) => problems.push(Problem::new("issuer", why)),
        Ok(false) if !on_loopback && !discovery.insecure_http => problems.push(Problem::new(
            "issuer",
            "http:// is allowed only when the discovery listener is on loopback (or discovery.insecure_http = true); use https://",
        )),
        Ok(_) => {}
    }
    Some(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let env: Vec<_> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_parts(text, &env, None)
            .map_err(|e| e.0.iter().map(|p| p.key.clone()).collect())
    }

    #[test]
    fn embedded_defaults_serve_a_loopback_issuer() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.issuer, "http://127.0.0.1:8443");
        assert_eq!(config.api.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.jwks_max_age, Duration::from_secs(300));
        assert_eq!(config.tokens.max_ttl, Duration::from_secs(86400));
        assert!(config.tokens.allows("//iam.googleapis.com/projects/1/x"));
    }

    #[test]
    fn all_cross_key_problems_are_listed_at_once() {
        let text = r#"
            issuer = "https://tfe.example.com/"
            [discovery]
            listen = "0.0.0.0:8443"
            jwks_max_age = "7h"
            [api]
            listen = "0.0.0.0:8443"
            [tokens]
            default_ttl = "48h"
            default_audience = "nope"
        "#;
        let keys = load(text, &[]).unwrap_err();
        for key in [
            "discovery.listen",
            "api.listen",
            "discovery.jwks_max_age",
            "tokens.default_ttl",
            "tokens.default_audience",
            "issuer",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn http_issuer_refused_off_loopback() {
        let err = load(
            "issuer = \"http://tfe.example.com\"\n[discovery]\nlisten = \"0.0.0.0:8443\"\ninsecure_http = false\n",
            &[],
        );
        assert!(err.unwrap_err().contains(&"issuer".to_string()));
        let ok = load(
            "issuer = \"http://tfe.example.com\"\n[discovery]\nlisten = \"0.0.0.0:8443\"\ninsecure_http = true\n",
            &[],
        );
        assert!(ok.is_ok());
    }
}
