//! What a Vault client is configured with wherever the configuration names a Vault: the forms of
//! an address, a mount path and a login (shared by `[[push]]` tables and `[keys.vault]`), and the
//! `[keys.vault]` section of the Vault transit key store.

use std::path::PathBuf;
use std::time::Duration;

use super::Problem;
use super::raw::Raw;
use super::schema::{Key, VaultKey};

pub use crate::vault::VaultAuth;

/// Which of the three login keys a problem with a login is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKey {
    TokenFile,
    RoleId,
    SecretIdFile,
}

/// The login the three keys describe, or which key is wrong and why.
pub fn auth(
    token_file: Option<String>,
    role_id: Option<String>,
    secret_id_file: Option<String>,
) -> Result<VaultAuth, (AuthKey, &'static str)> {
    match (token_file, role_id, secret_id_file) {
        (Some(path), None, None) => Ok(VaultAuth::TokenFile(path.into())),
        (None, Some(role_id), Some(path)) => Ok(VaultAuth::AppRole {
            role_id,
            secret_id_file: path.into(),
        }),
        (None, Some(_), None) => Err((AuthKey::SecretIdFile, "is required with role_id")),
        (None, None, Some(_)) => Err((AuthKey::RoleId, "is required with secret_id_file")),
        (None, None, None) => Err((
            AuthKey::TokenFile,
            "is required, or role_id and secret_id_file for an AppRole login",
        )),
        (Some(_), _, _) => Err((
            AuthKey::TokenFile,
            "set either token_file or role_id and secret_id_file, not both",
        )),
    }
}

/// `http(s)://host[:port]` without a trailing slash, or why not.
pub fn addr(text: &str) -> Result<String, String> {
    let addr = text.trim_end_matches('/').to_owned();
    let ok = (addr.starts_with("https://") || addr.starts_with("http://"))
        && reqwest::Url::parse(&addr).is_ok_and(|u| u.path() == "/" || u.path().is_empty());
    match ok {
        true => Ok(addr),
        false => Err(format!("{addr:?} is not an http(s)://host[:port] address")),
    }
}

/// A mount or secret path without slashes at either end, of plain segments, or why not.
pub fn path(text: &str, what: &str) -> Result<String, String> {
    let path = text.trim_matches('/').to_owned();
    let ok = !path.is_empty()
        && path.split('/').all(|part| {
            !part.is_empty()
                && part != ".."
                && part != "."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    match ok {
        true => Ok(path),
        false => Err(format!("{path:?} is not a {what}")),
    }
}

pub use crate::keys::store::transit::TransitConfig;

/// The `[keys.vault]` section, required with `keys.store = "vault-transit"`.
pub(super) fn transit(raw: &Raw, problems: &mut Vec<Problem>) -> Option<TransitConfig> {
    let at = |key| Key::KeysVault(key);
    let before = problems.len();
    let addrs = match raw.list(at(VaultKey::Addr)) {
        Some([]) => {
            problems.push(Problem::at(
                at(VaultKey::Addr),
                "names no address: give one, or several nodes of one cluster",
            ));
            None
        }
        Some(list) => list
            .iter()
            .map(|text| addr(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| problems.push(Problem::at(at(VaultKey::Addr), why)))
            .ok(),
        None => {
            problems.push(Problem::at(
                at(VaultKey::Addr),
                "is required with keys.store = \"vault-transit\": the Vault address, such as \"https://vault.internal:8200\"",
            ));
            None
        }
    };
    let mut path_of = |key: VaultKey, default: &str, what: &str| {
        path(raw.str(at(key)).unwrap_or(default), what)
            .map_err(|why| problems.push(Problem::at(at(key), why)))
            .ok()
    };
    let mount = path_of(VaultKey::Mount, "transit", "mount path");
    let key = path_of(VaultKey::Key, "tfe-oidc", "transit key name");
    let kv_mount = path_of(VaultKey::KvMount, "secret", "mount path");
    let default_kv_path = format!("tfe-oidc/{}", key.as_deref().unwrap_or("tfe-oidc"));
    let kv_path = path_of(VaultKey::KvPath, &default_kv_path, "secret path");
    if key.as_deref().is_some_and(|k| k.contains('/')) {
        problems.push(Problem::at(at(VaultKey::Key), "must not contain a slash"));
    }
    let owned = |key| raw.str(at(key)).map(str::to_owned);
    let auth = auth(
        owned(VaultKey::TokenFile),
        owned(VaultKey::RoleId),
        owned(VaultKey::SecretIdFile),
    )
    .map_err(|(key, why)| {
        let key = match key {
            AuthKey::TokenFile => VaultKey::TokenFile,
            AuthKey::RoleId => VaultKey::RoleId,
            AuthKey::SecretIdFile => VaultKey::SecretIdFile,
        };
        problems.push(Problem::at(at(key), why));
    })
    .ok();
    let timeout = raw
        .duration(at(VaultKey::Timeout))
        .unwrap_or(Duration::from_secs(10));
    if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(300) {
        problems.push(Problem::at(
            at(VaultKey::Timeout),
            "must be between 100ms and 5m",
        ));
    }
    let refresh = raw
        .duration(at(VaultKey::Refresh))
        .unwrap_or(Duration::from_secs(5));
    if refresh < Duration::from_millis(200) || refresh > Duration::from_secs(60) {
        problems.push(Problem::at(
            at(VaultKey::Refresh),
            "must be between 200ms and 1m (replicas must see each other's changes long before a new key signs)",
        ));
    }
    if problems.len() > before {
        return None;
    }
    Some(TransitConfig {
        addrs: addrs?,
        namespace: owned(VaultKey::Namespace).filter(|n| !n.is_empty()),
        ca_file: owned(VaultKey::CaFile).map(PathBuf::from),
        mount: mount?,
        key: key?,
        auth: auth?,
        timeout,
        kv_mount: kv_mount?,
        kv_path: kv_path?,
        refresh,
    })
}

/// The `[keys.vault]` keys set while `keys.store` is not `vault-transit`: a mistake worth naming.
pub(super) fn stray_keys(raw: &Raw) -> Vec<Key> {
    VaultKey::ALL
        .into_iter()
        .map(Key::KeysVault)
        .filter(|&key| raw.is_set(key))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, StoreKind, VaultAuth};

    fn problems(text: &str) -> Vec<String> {
        match Config::from_parts(text, &[], None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn the_transit_store_takes_the_nodes_of_a_cluster() {
        let text = "[keys]\nstore = \"vault-transit\"\n[keys.vault]\naddr = [\"https://v1:8200\", \"https://v2:8200/\"]\ntoken_file = \"t\"\n";
        let config = Config::from_parts(text, &[], None).unwrap();
        let StoreKind::VaultTransit(t) = config.keys.store else {
            panic!("not the transit store")
        };
        assert_eq!(t.addrs, ["https://v1:8200", "https://v2:8200"]);
        let env = [(
            "TFE_OIDC_KEYS_VAULT_ADDR".to_owned(),
            "https://a:8200, https://b:8200".to_owned(),
        )];
        let text = "[keys]\nstore = \"vault-transit\"\n[keys.vault]\ntoken_file = \"t\"\n";
        let config = Config::from_parts(text, &env, None).unwrap();
        let StoreKind::VaultTransit(t) = config.keys.store else {
            panic!("not the transit store")
        };
        assert_eq!(t.addrs, ["https://a:8200", "https://b:8200"]);
        let bad = problems(
            "[keys]\nstore = \"vault-transit\"\n[keys.vault]\naddr = []\ntoken_file = \"t\"\n",
        );
        assert!(bad[0].contains("names no address"), "{bad:?}");
    }

    #[test]
    fn the_transit_store_reads_its_section_with_defaults() {
        let text = "[keys]\nstore = \"vault-transit\"\n[keys.vault]\naddr = \"https://v:8200/\"\nrole_id = \"r\"\nsecret_id_file = \"s\"\n";
        let config = Config::from_parts(text, &[], None).unwrap();
        let StoreKind::VaultTransit(t) = config.keys.store else {
            panic!("not the transit store")
        };
        assert_eq!(t.addrs, ["https://v:8200"]);
        assert_eq!((t.mount.as_str(), t.key.as_str()), ("transit", "tfe-oidc"));
        assert_eq!(
            (t.kv_mount.as_str(), t.kv_path.as_str()),
            ("secret", "tfe-oidc/tfe-oidc")
        );
        assert!(matches!(t.auth, VaultAuth::AppRole { .. }));
        let env = [("TFE_OIDC_KEYS_VAULT_KEY".to_owned(), "other".to_owned())];
        let config = Config::from_parts(text, &env, None).unwrap();
        let StoreKind::VaultTransit(t) = config.keys.store else {
            panic!("not the transit store")
        };
        assert_eq!(t.kv_path, "tfe-oidc/other");
    }

    #[test]
    fn every_problem_of_the_section_is_named() {
        let found = problems(
            "[keys]\nstore = \"vault-transit\"\n[keys.vault]\nkey = \"a/b\"\nrefresh = \"10m\"\ntoken_file = \"t\"\nrole_id = \"r\"\n",
        );
        let keys: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "keys.vault.addr",
                "keys.vault.key",
                "keys.vault.token_file",
                "keys.vault.refresh"
            ],
            "{found:?}"
        );
        let stray = problems("[keys.vault]\naddr = \"https://v\"\n");
        assert!(
            stray[0].starts_with("keys.vault.addr: is a setting of the Vault transit store"),
            "{stray:?}"
        );
        assert!(problems("[keys]\nstore = \"s3\"\n")[0].contains("\"file\" or \"vault-transit\""));
    }
}
