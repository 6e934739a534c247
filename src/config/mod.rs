//! The validated configuration.
//!
//! `Config::load` reads the TOML file (or none: the embedded defaults), applies `TFE_OIDC_*`
//! overrides, and checks every rule, returning all problems at once. Everything after this module
//! trusts a `Config`. The keys, their paths and variables are `schema.rs`'s; parsing text into
//! typed values is `raw.rs`'s job, the forms of single values are `issuer.rs`'s and `forms.rs`'s
//! (CIDR, glob, RSA key size), `listener.rs` holds the rules of each listener's section, and
//! `describe.rs` renders the effective settings; this module owns defaults and the rules between
//! keys. It does not open sockets or read keys.

mod describe;
pub mod federation;
mod forms;
mod listener;
pub mod push;
pub mod raw;
pub mod schema;
pub mod vault;

pub use crate::token::TokenPolicy;
pub use crate::token::issuer::{Issuer, IssuerError, check_issuer};
pub use describe::{describe, short_duration};
pub use federation::FederationRule;
pub use forms::{FormError, RsaBits, glob_match, is_loopback};
use listener::listener;
pub use listener::{ListenerConfig, TlsFiles};
pub use push::PushTarget;
pub use schema::{Key, ListenerKey, Section, VaultKey};
pub use vault::{TransitConfig, VaultAuth};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::token::claims::Audience;
use raw::Raw;

/// One thing wrong with the configuration, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    /// A problem with the value of `key`.
    pub fn at(key: Key, message: impl fmt::Display) -> Problem {
        Problem::new(key.path(), message)
    }

    /// A problem with something that is not a key: `(file)`, an unknown variable or key.
    pub fn new(key: &str, message: impl fmt::Display) -> Problem {
        Problem {
            key: key.to_owned(),
            message: message.to_string(),
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

/// Which key store holds the signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// `keys.dir` on this machine's disk.
    File,
    /// A Vault transit key, shared by every replica on it.
    VaultTransit(Box<TransitConfig>),
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub store: StoreKind,
    pub dir: PathBuf,
    pub rsa_bits: RsaBits,
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
    pub issuer: Issuer,
    pub discovery: ListenerConfig,
    pub jwks_max_age: Duration,
    pub api: ListenerConfig,
    pub tokens_file: Option<PathBuf>,
    pub max_body: usize,
    pub tokens: TokenPolicy,
    pub keys: KeysConfig,
    pub audit_path: Option<PathBuf>,
    pub exchange: ExchangeConfig,
    /// `discovery.enabled`: false runs no discovery listener at all (push mode only).
    pub discovery_enabled: bool,
    /// The `[[push]]` tables: the Vault JWT auth mounts whose config the issuer keeps in sync.
    pub push: Vec<PushTarget>,
    /// The `[[api.federation]]` tables: upstream issuers whose tokens are API callers.
    pub federation: Vec<FederationRule>,
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
    let discovery = listener(raw, Section::Discovery, "127.0.0.1:8443", problems);
    let api = listener(raw, Section::Api, "127.0.0.1:8080", problems);
    let tokens = token_policy(raw, problems);
    let keys = keys(raw, problems);
    let jwks_max_age = raw
        .duration(Key::JwksMaxAge)
        .unwrap_or(Duration::from_secs(300));
    let max_body = raw.size(Key::MaxBody).unwrap_or(64 * 1024);
    if max_body == 0 || max_body > 16 << 20 {
        problems.push(Problem::at(Key::MaxBody, "must be between 1B and 16MiB"));
    }
    let (discovery, api, tokens, keys) = (discovery?, api?, tokens?, keys?);
    if discovery.listen == api.listen && discovery.listen.port() != 0 {
        problems.push(Problem::at(
            Key::Listener(Section::Api, ListenerKey::Listen),
            "must differ from discovery.listen",
        ));
    }
    if jwks_max_age.is_zero() || jwks_max_age > keys.rotation_period / 4 {
        problems.push(Problem::at(
            Key::JwksMaxAge,
            format!(
                "must be more than 0 and at most rotation_period / 4 ({}), so that a new key is fetched long before it signs",
                humantime::format_duration(keys.rotation_period / 4)
            ),
        ));
    }
    let push = push::targets(raw.push(), problems);
    let federation = federation::rules(raw.federation(), problems);
    let issuer = issuer(raw, &discovery, problems)?;
    Some(Config {
        discovery_enabled: raw.bool(Key::DiscoveryEnabled).unwrap_or(true),
        push,
        federation,
        issuer,
        discovery,
        jwks_max_age,
        api,
        tokens_file: raw.str(Key::TokensFile).map(PathBuf::from),
        max_body: max_body as usize,
        tokens,
        keys,
        audit_path: raw.str(Key::AuditPath).map(PathBuf::from),
        exchange: ExchangeConfig {
            vault_timeout: raw
                .duration(Key::VaultTimeout)
                .unwrap_or(Duration::from_secs(60)),
            allowed_vault_addrs: raw
                .list(Key::AllowedVaultAddrs)
                .unwrap_or_default()
                .to_vec(),
        },
    })
}

fn token_policy(raw: &Raw, problems: &mut Vec<Problem>) -> Option<TokenPolicy> {
    let audiences: Vec<String> = match raw.list(Key::Audiences) {
        Some(list) => list.to_vec(),
        None => DEFAULT_AUDIENCES.iter().map(|s| s.to_string()).collect(),
    };
    if audiences.is_empty() {
        problems.push(Problem::at(
            Key::Audiences,
            "must list at least one audience",
        ));
    }
    let default_text = raw
        .str(Key::DefaultAudience)
        .unwrap_or("vault.workload.identity");
    let default_audience = match Audience::parse(default_text) {
        Ok(aud) => Some(aud),
        Err(why) => {
            problems.push(Problem::at(Key::DefaultAudience, why));
            None
        }
    };
    let default_ttl = raw
        .duration(Key::DefaultTtl)
        .unwrap_or(Duration::from_secs(2 * 3600));
    let max_ttl = raw
        .duration(Key::MaxTtl)
        .unwrap_or(Duration::from_secs(24 * 3600));
    if default_ttl < Duration::from_secs(1) {
        problems.push(Problem::at(Key::DefaultTtl, "must be at least 1s"));
    }
    if default_ttl > max_ttl {
        problems.push(Problem::at(
            Key::DefaultTtl,
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
        problems.push(Problem::at(
            Key::DefaultAudience,
            "must match one of tokens.audiences",
        ));
    }
    Some(policy)
}

fn keys(raw: &Raw, problems: &mut Vec<Problem>) -> Option<KeysConfig> {
    let store = match raw.str(Key::KeysStore).unwrap_or("file") {
        "file" => {
            for key in vault::stray_keys(raw) {
                problems.push(Problem::at(
                    key,
                    "is a setting of the Vault transit store: set keys.store = \"vault-transit\" or remove it",
                ));
            }
            Some(StoreKind::File)
        }
        "vault-transit" => {
            vault::transit(raw, problems).map(|t| StoreKind::VaultTransit(Box::new(t)))
        }
        other => {
            problems.push(Problem::at(
                Key::KeysStore,
                format!("{other:?} is not a key store: use \"file\" or \"vault-transit\""),
            ));
            None
        }
    };
    let rsa_bits = match raw.int(Key::RsaBits).map(RsaBits::try_from) {
        None => Some(RsaBits::default()),
        Some(Ok(bits)) => Some(bits),
        Some(Err(e)) => {
            problems.push(Problem::at(Key::RsaBits, e));
            None
        }
    };
    let rotation_period = raw
        .duration(Key::RotationPeriod)
        .unwrap_or(Duration::from_secs(24 * 3600));
    if rotation_period < Duration::from_secs(4) {
        problems.push(Problem::at(Key::RotationPeriod, "must be at least 4s"));
    }
    let dir = raw.str(Key::KeysDir).unwrap_or("keys");
    if dir.is_empty() {
        problems.push(Problem::at(Key::KeysDir, "must not be empty"));
    }
    Some(KeysConfig {
        store: store?,
        dir: PathBuf::from(dir),
        rsa_bits: rsa_bits?,
        rotation_period,
    })
}

fn issuer(raw: &Raw, discovery: &ListenerConfig, problems: &mut Vec<Problem>) -> Option<Issuer> {
    let on_loopback = is_loopback(discovery.listen.ip());
    let parsed = match raw.str(Key::Issuer) {
        Some(text) => Issuer::parse_for(text, on_loopback || discovery.insecure_http),
        None if on_loopback => {
            let scheme = if discovery.tls.is_some() {
                "https"
            } else {
                "http"
            };
            Issuer::parse(&format!("{scheme}://{}", discovery.listen))
        }
        None => {
            problems.push(Problem::at(Key::Issuer, "is required when the discovery listener is not on loopback (e.g. \"https://tfe.example.com\")"));
            return None;
        }
    };
    parsed
        .map_err(|e| problems.push(Problem::at(Key::Issuer, e)))
        .ok()
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
    fn rsa_bits_is_one_of_three_sizes_and_never_falls_back() {
        assert_eq!(load("", &[]).unwrap().keys.rsa_bits, RsaBits::Rsa2048);
        let config = load("[keys]\nrsa_bits = 4096\n", &[]).unwrap();
        assert_eq!(config.keys.rsa_bits, RsaBits::Rsa4096);
        for bits in ["1024", "2047", "8192"] {
            let env = [("TFE_OIDC_KEYS_RSA_BITS", bits)];
            assert_eq!(load("", &env).unwrap_err(), ["keys.rsa_bits"], "{bits}");
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
