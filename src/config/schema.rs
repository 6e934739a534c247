//! The configuration's keys: each one's dotted path, its type and its `TFE_OIDC_*` variable.
//!
//! Code names a key with a [`Key`], never with its text, so a misspelt key does not compile. The
//! path and the variable of every key are written out once, in [`Key::spec`].

use std::fmt;

/// The type of one configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Duration,
    Size,
    Int,
    Bool,
    StrList,
}

impl Kind {
    /// What a value of this kind looks like, as messages say it.
    pub fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Duration => "a duration such as \"90s\", \"20m\", \"24h\" or \"30d\"",
            Kind::Size => "a size such as \"64KiB\" or \"1MiB\"",
            Kind::Int => "an integer",
            Kind::Bool => "true or false",
            Kind::StrList => "a list of strings",
        }
    }
}

/// One of the two listeners; its keys live in the section of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Discovery,
    Api,
}

impl Section {
    pub const ALL: [Section; 2] = [Section::Discovery, Section::Api];

    /// The section's name: `discovery` or `api`.
    pub fn name(self) -> &'static str {
        match self {
            Section::Discovery => "discovery",
            Section::Api => "api",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The keys both listener sections have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListenerKey {
    Listen,
    TlsCert,
    TlsKey,
    ClientCa,
    Allow,
    InsecureHttp,
    MaxConnections,
}

/// One configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Issuer,
    Listener(Section, ListenerKey),
    JwksMaxAge,
    DiscoveryEnabled,
    TokensFile,
    MaxBody,
    DefaultAudience,
    Audiences,
    DefaultTtl,
    MaxTtl,
    KeysStore,
    KeysDir,
    RsaBits,
    RotationPeriod,
    /// A key of `[keys.vault]`, the Vault transit store's settings.
    KeysVault(VaultKey),
    AuditPath,
    VaultTimeout,
    AllowedVaultAddrs,
}

/// The keys of `[keys.vault]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VaultKey {
    Addr,
    Namespace,
    CaFile,
    Mount,
    Key,
    TokenFile,
    RoleId,
    SecretIdFile,
    Timeout,
    KvMount,
    KvPath,
    Refresh,
}

impl VaultKey {
    pub const ALL: [VaultKey; 12] = [
        VaultKey::Addr,
        VaultKey::Namespace,
        VaultKey::CaFile,
        VaultKey::Mount,
        VaultKey::Key,
        VaultKey::TokenFile,
        VaultKey::RoleId,
        VaultKey::SecretIdFile,
        VaultKey::Timeout,
        VaultKey::KvMount,
        VaultKey::KvPath,
        VaultKey::Refresh,
    ];
}

/// Every key the configuration accepts, in the order its problems are reported.
pub const SCHEMA: &[Key] = {
    use ListenerKey::*;
    use Section::*;
    &[
        Key::Issuer,
        Key::Listener(Discovery, Listen),
        Key::Listener(Discovery, TlsCert),
        Key::Listener(Discovery, TlsKey),
        Key::Listener(Discovery, ClientCa),
        Key::Listener(Discovery, Allow),
        Key::JwksMaxAge,
        Key::DiscoveryEnabled,
        Key::Listener(Discovery, InsecureHttp),
        Key::Listener(Discovery, MaxConnections),
        Key::Listener(Api, Listen),
        Key::Listener(Api, TlsCert),
        Key::Listener(Api, TlsKey),
        Key::Listener(Api, ClientCa),
        Key::Listener(Api, Allow),
        Key::Listener(Api, InsecureHttp),
        Key::Listener(Api, MaxConnections),
        Key::TokensFile,
        Key::MaxBody,
        Key::DefaultAudience,
        Key::Audiences,
        Key::DefaultTtl,
        Key::MaxTtl,
        Key::KeysStore,
        Key::KeysDir,
        Key::RsaBits,
        Key::RotationPeriod,
        Key::KeysVault(VaultKey::Addr),
        Key::KeysVault(VaultKey::Namespace),
        Key::KeysVault(VaultKey::CaFile),
        Key::KeysVault(VaultKey::Mount),
        Key::KeysVault(VaultKey::Key),
        Key::KeysVault(VaultKey::TokenFile),
        Key::KeysVault(VaultKey::RoleId),
        Key::KeysVault(VaultKey::SecretIdFile),
        Key::KeysVault(VaultKey::Timeout),
        Key::KeysVault(VaultKey::KvMount),
        Key::KeysVault(VaultKey::KvPath),
        Key::KeysVault(VaultKey::Refresh),
        Key::AuditPath,
        Key::VaultTimeout,
        Key::AllowedVaultAddrs,
    ]
};

impl Key {
    /// The key's dotted path in the file, as every message names it: `keys.dir`.
    pub fn path(self) -> &'static str {
        self.spec().0
    }

    /// The environment variable that overrides the key: `TFE_OIDC_KEYS_DIR`.
    pub fn env(self) -> &'static str {
        self.spec().1
    }

    pub fn kind(self) -> Kind {
        self.spec().2
    }

    /// The key whose dotted path is `path`.
    pub fn from_path(path: &str) -> Option<Key> {
        SCHEMA.iter().copied().find(|key| key.path() == path)
    }

    /// The key that the environment variable `name` overrides.
    pub fn from_env(name: &str) -> Option<Key> {
        SCHEMA.iter().copied().find(|key| key.env() == name)
    }

    /// Path, variable and kind, each written out in full so that all three can be searched for.
    fn spec(self) -> (&'static str, &'static str, Kind) {
        use ListenerKey::*;
        use Section::*;
        match self {
            Key::Issuer => ("issuer", "TFE_OIDC_ISSUER", Kind::Str),
            Key::Listener(section, key) => match (section, key) {
                (Discovery, Listen) => ("discovery.listen", "TFE_OIDC_DISCOVERY_LISTEN", Kind::Str),
                (Discovery, TlsCert) => (
                    "discovery.tls_cert",
                    "TFE_OIDC_DISCOVERY_TLS_CERT",
                    Kind::Str,
                ),
                (Discovery, TlsKey) => {
                    ("discovery.tls_key", "TFE_OIDC_DISCOVERY_TLS_KEY", Kind::Str)
                }
                (Discovery, ClientCa) => (
                    "discovery.client_ca",
                    "TFE_OIDC_DISCOVERY_CLIENT_CA",
                    Kind::Str,
                ),
                (Discovery, Allow) => {
                    ("discovery.allow", "TFE_OIDC_DISCOVERY_ALLOW", Kind::StrList)
                }
                (Discovery, InsecureHttp) => (
                    "discovery.insecure_http",
                    "TFE_OIDC_DISCOVERY_INSECURE_HTTP",
                    Kind::Bool,
                ),
                (Discovery, MaxConnections) => (
                    "discovery.max_connections",
                    "TFE_OIDC_DISCOVERY_MAX_CONNECTIONS",
                    Kind::Int,
                ),
                (Api, Listen) => ("api.listen", "TFE_OIDC_API_LISTEN", Kind::Str),
                (Api, TlsCert) => ("api.tls_cert", "TFE_OIDC_API_TLS_CERT", Kind::Str),
                (Api, TlsKey) => ("api.tls_key", "TFE_OIDC_API_TLS_KEY", Kind::Str),
                (Api, ClientCa) => ("api.client_ca", "TFE_OIDC_API_CLIENT_CA", Kind::Str),
                (Api, Allow) => ("api.allow", "TFE_OIDC_API_ALLOW", Kind::StrList),
                (Api, InsecureHttp) => (
                    "api.insecure_http",
                    "TFE_OIDC_API_INSECURE_HTTP",
                    Kind::Bool,
                ),
                (Api, MaxConnections) => (
                    "api.max_connections",
                    "TFE_OIDC_API_MAX_CONNECTIONS",
                    Kind::Int,
                ),
            },
            Key::JwksMaxAge => (
                "discovery.jwks_max_age",
                "TFE_OIDC_DISCOVERY_JWKS_MAX_AGE",
                Kind::Duration,
            ),
            Key::DiscoveryEnabled => (
                "discovery.enabled",
                "TFE_OIDC_DISCOVERY_ENABLED",
                Kind::Bool,
            ),
            Key::TokensFile => ("api.tokens_file", "TFE_OIDC_API_TOKENS_FILE", Kind::Str),
            Key::MaxBody => ("api.max_body", "TFE_OIDC_API_MAX_BODY", Kind::Size),
            Key::DefaultAudience => (
                "tokens.default_audience",
                "TFE_OIDC_TOKENS_DEFAULT_AUDIENCE",
                Kind::Str,
            ),
            Key::Audiences => (
                "tokens.audiences",
                "TFE_OIDC_TOKENS_AUDIENCES",
                Kind::StrList,
            ),
            Key::DefaultTtl => (
                "tokens.default_ttl",
                "TFE_OIDC_TOKENS_DEFAULT_TTL",
                Kind::Duration,
            ),
            Key::MaxTtl => ("tokens.max_ttl", "TFE_OIDC_TOKENS_MAX_TTL", Kind::Duration),
            Key::KeysStore => ("keys.store", "TFE_OIDC_KEYS_STORE", Kind::Str),
            Key::KeysDir => ("keys.dir", "TFE_OIDC_KEYS_DIR", Kind::Str),
            Key::RsaBits => ("keys.rsa_bits", "TFE_OIDC_KEYS_RSA_BITS", Kind::Int),
            Key::RotationPeriod => (
                "keys.rotation_period",
                "TFE_OIDC_KEYS_ROTATION_PERIOD",
                Kind::Duration,
            ),
            Key::KeysVault(key) => match key {
                VaultKey::Addr => ("keys.vault.addr", "TFE_OIDC_KEYS_VAULT_ADDR", Kind::StrList),
                VaultKey::Namespace => (
                    "keys.vault.namespace",
                    "TFE_OIDC_KEYS_VAULT_NAMESPACE",
                    Kind::Str,
                ),
                VaultKey::CaFile => (
                    "keys.vault.ca_file",
                    "TFE_OIDC_KEYS_VAULT_CA_FILE",
                    Kind::Str,
                ),
                VaultKey::Mount => ("keys.vault.mount", "TFE_OIDC_KEYS_VAULT_MOUNT", Kind::Str),
                VaultKey::Key => ("keys.vault.key", "TFE_OIDC_KEYS_VAULT_KEY", Kind::Str),
                VaultKey::TokenFile => (
                    "keys.vault.token_file",
                    "TFE_OIDC_KEYS_VAULT_TOKEN_FILE",
                    Kind::Str,
                ),
                VaultKey::RoleId => (
                    "keys.vault.role_id",
                    "TFE_OIDC_KEYS_VAULT_ROLE_ID",
                    Kind::Str,
                ),
                VaultKey::SecretIdFile => (
                    "keys.vault.secret_id_file",
                    "TFE_OIDC_KEYS_VAULT_SECRET_ID_FILE",
                    Kind::Str,
                ),
                VaultKey::Timeout => (
                    "keys.vault.timeout",
                    "TFE_OIDC_KEYS_VAULT_TIMEOUT",
                    Kind::Duration,
                ),
                VaultKey::KvMount => (
                    "keys.vault.kv_mount",
                    "TFE_OIDC_KEYS_VAULT_KV_MOUNT",
                    Kind::Str,
                ),
                VaultKey::KvPath => (
                    "keys.vault.kv_path",
                    "TFE_OIDC_KEYS_VAULT_KV_PATH",
                    Kind::Str,
                ),
                VaultKey::Refresh => (
                    "keys.vault.refresh",
                    "TFE_OIDC_KEYS_VAULT_REFRESH",
                    Kind::Duration,
                ),
            },
            Key::AuditPath => ("audit.path", "TFE_OIDC_AUDIT_PATH", Kind::Str),
            Key::VaultTimeout => (
                "exchange.vault_timeout",
                "TFE_OIDC_EXCHANGE_VAULT_TIMEOUT",
                Kind::Duration,
            ),
            Key::AllowedVaultAddrs => (
                "exchange.allowed_vault_addrs",
                "TFE_OIDC_EXCHANGE_ALLOWED_VAULT_ADDRS",
                Kind::StrList,
            ),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_key_round_trips_between_path_and_variable() {
        for &key in SCHEMA {
            let derived = format!("TFE_OIDC_{}", key.path().replace('.', "_").to_uppercase());
            assert_eq!(key.env(), derived, "{key:?}");
            assert_eq!(Key::from_path(key.path()), Some(key), "{key:?}");
            assert_eq!(Key::from_env(key.env()), Some(key), "{key:?}");
            assert_eq!(key.to_string(), key.path());
        }
        assert_eq!(Key::from_path("keys.nope"), None);
        assert_eq!(Key::from_env("TFE_OIDC_NOPE"), None);
    }

    #[test]
    fn schema_lists_each_key_once_and_every_listener_key_of_both_sections() {
        let keys: HashSet<Key> = SCHEMA.iter().copied().collect();
        let paths: HashSet<&str> = SCHEMA.iter().map(|k| k.path()).collect();
        let vars: HashSet<&str> = SCHEMA.iter().map(|k| k.env()).collect();
        assert_eq!(keys.len(), SCHEMA.len(), "a key is listed twice");
        assert_eq!(paths.len(), SCHEMA.len(), "two keys share a path");
        assert_eq!(vars.len(), SCHEMA.len(), "two keys share a variable");
        use ListenerKey::*;
        for section in Section::ALL {
            for name in [
                Listen,
                TlsCert,
                TlsKey,
                ClientCa,
                Allow,
                InsecureHttp,
                MaxConnections,
            ] {
                let key = Key::Listener(section, name);
                assert!(keys.contains(&key), "{key:?} missing from SCHEMA");
                assert!(key.path().starts_with(&format!("{section}.")), "{key:?}");
            }
        }
        assert_eq!(SCHEMA.len(), 2 * 7 + 16 + VaultKey::ALL.len());
        for key in VaultKey::ALL {
            assert!(
                keys.contains(&Key::KeysVault(key)),
                "{key:?} missing from SCHEMA"
            );
        }
    }
}
