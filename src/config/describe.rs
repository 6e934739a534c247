//! `check-config`'s rendering of the effective settings.

use std::path::PathBuf;
use std::time::Duration;

use super::Config;

/// The effective settings, one `key = value` line each, as `check-config` prints them. The
/// configuration holds no secret (tokens are stored as digests, keys live in the key store), so
/// nothing needs redacting; file paths are shown, never their contents.
pub fn describe(c: &Config) -> String {
    let d = |d: Duration| format!("\"{}\"", short_duration(d));
    let path = |p: &Option<PathBuf>| {
        p.as_ref().map_or("(none)".to_owned(), |p| {
            format!("{:?}", p.display().to_string())
        })
    };
    let list = |items: &[String]| {
        format!(
            "[{}]",
            items
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut lines = vec![format!("issuer = {:?}", c.issuer.as_str())];
    for (name, l) in [("discovery", &c.discovery), ("api", &c.api)] {
        lines.push(format!("{name}.listen = \"{}\"", l.listen));
        lines.push(format!(
            "{name}.tls = {}",
            l.tls.as_ref().map_or("off".to_owned(), |t| format!(
                "cert {:?}, key {:?}",
                t.cert.display().to_string(),
                t.key.display().to_string()
            ))
        ));
        lines.push(format!(
            "{name}.client_ca = {}",
            path(&l.tls.as_ref().and_then(|t| t.client_ca.clone()))
        ));
        lines.push(format!(
            "{name}.allow = {}",
            list(&l.allow.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        ));
        lines.push(format!("{name}.insecure_http = {}", l.insecure_http));
        lines.push(format!(
            "{name}.max_connections = {}",
            l.max_connections.map_or(
                "(auto: half the file descriptor limit, at most 16384)".to_owned(),
                |n| n.to_string()
            )
        ));
    }
    lines.push(format!("discovery.jwks_max_age = {}", d(c.jwks_max_age)));
    lines.push(format!(
        "api.tokens_file = {}",
        c.tokens_file.as_ref().map_or(
            "(none: development token in <keys.dir>/api-token)".to_owned(),
            |p| format!("{:?}", p.display().to_string())
        )
    ));
    lines.push(format!("api.max_body = {}", c.max_body));
    lines.push(format!(
        "tokens.default_audience = {:?}",
        c.tokens.default_audience.as_str()
    ));
    lines.push(format!("tokens.audiences = {}", list(&c.tokens.audiences)));
    lines.push(format!("tokens.default_ttl = {}", d(c.tokens.default_ttl)));
    lines.push(format!("tokens.max_ttl = {}", d(c.tokens.max_ttl)));
    match &c.keys.store {
        super::StoreKind::File => lines.push("keys.store = \"file\"".to_owned()),
        super::StoreKind::VaultTransit(v) => {
            lines.push("keys.store = \"vault-transit\"".to_owned());
            lines.push(format!("keys.vault.addr = {:?}", v.addrs));
            lines.push(format!(
                "keys.vault.namespace = {}",
                v.namespace
                    .as_ref()
                    .map_or("(none)".to_owned(), |n| format!("{n:?}"))
            ));
            lines.push(format!("keys.vault.ca_file = {}", path(&v.ca_file)));
            lines.push(format!("keys.vault.mount = {:?}", v.mount));
            lines.push(format!("keys.vault.key = {:?}", v.key));
            lines.push(auth_line("keys.vault", &v.auth));
            lines.push(format!("keys.vault.timeout = {}", d(v.timeout)));
            lines.push(format!("keys.vault.kv_mount = {:?}", v.kv_mount));
            lines.push(format!("keys.vault.kv_path = {:?}", v.kv_path));
            lines.push(format!("keys.vault.refresh = {}", d(v.refresh)));
        }
    }
    lines.push(format!("keys.dir = {:?}", c.keys.dir.display().to_string()));
    lines.push(format!("keys.rsa_bits = {}", c.keys.rsa_bits));
    lines.push(format!(
        "keys.rotation_period = {}",
        d(c.keys.rotation_period)
    ));
    lines.push(format!("audit.path = {}", path(&c.audit_path)));
    lines.push(format!(
        "exchange.vault_timeout = {}",
        d(c.exchange.vault_timeout)
    ));
    lines.push(format!(
        "exchange.allowed_vault_addrs = {}",
        list(&c.exchange.allowed_vault_addrs)
    ));
    lines.push(format!("discovery.enabled = {}", c.discovery_enabled));
    for (i, t) in c.push.iter().enumerate() {
        lines.push(format!("push[{i}].addr = {:?}", t.addr));
        lines.push(format!("push[{i}].mount = {:?}", t.mount));
        lines.push(format!(
            "push[{i}].namespace = {}",
            t.namespace
                .as_ref()
                .map_or("(none)".to_owned(), |n| format!("{n:?}"))
        ));
        lines.push(format!("push[{i}].ca_file = {}", path(&t.ca_file)));
        lines.push(auth_line(&format!("push[{i}]"), &t.auth));
        lines.push(format!(
            "push[{i}].repair_interval = {}",
            d(t.repair_interval)
        ));
    }
    for (i, r) in c.federation.iter().enumerate() {
        let at = format!("api.federation[{i}]");
        lines.push(format!("{at}.name = {:?}", r.name));
        lines.push(format!("{at}.issuer = {:?}", r.issuer));
        lines.push(format!("{at}.audiences = {}", list(&r.audiences)));
        lines.push(format!("{at}.ca_file = {}", path(&r.ca_file)));
        for (claim, globs) in &r.bound_claims {
            lines.push(format!("{at}.bound_claims.{claim} = {}", list(globs)));
        }
        let scopes: Vec<String> = r.scopes.iter().map(|s| s.as_str().to_owned()).collect();
        lines.push(format!("{at}.scopes = {}", list(&scopes)));
        let subs: Vec<String> = r.sub.iter().map(|t| t.as_str().to_owned()).collect();
        lines.push(format!("{at}.sub = {}", list(&subs)));
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// The login keys of a Vault section (never a secret: only where to read it).
fn auth_line(section: &str, auth: &super::VaultAuth) -> String {
    match auth {
        super::VaultAuth::TokenFile(p) => {
            format!("{section}.token_file = {:?}", p.display().to_string())
        }
        super::VaultAuth::AppRole {
            role_id,
            secret_id_file,
        } => format!(
            "{section}.role_id = {role_id:?}, secret_id_file = {:?}",
            secret_id_file.display().to_string()
        ),
    }
}

/// A duration in the largest whole unit of the config's own forms (`90s`, `20m`, `24h`, `30d`).
pub fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => "0s".to_owned(),
        s if s % 86400 == 0 && s >= 7 * 86400 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
