//! The `[[push]]` tables: the Vault JWT auth mounts whose config the issuer keeps in sync.
//!
//! Each table is read on its own, and every problem names its table by position: `push[0].addr`
//! is the `addr` of the first `[[push]]` table. Push entries have no `TFE_OIDC_*` overrides. What a
//! push does with these values is `crate::push`'s.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use toml::Value;

use super::Problem;
use super::raw::{RawValue, from_toml};
use super::schema::Kind;
use super::vault::{self, AuthKey, VaultAuth};

/// One Vault JWT auth mount to keep in sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// `scheme://host[:port]`, without a trailing slash.
    pub addr: String,
    /// The JWT auth mount's path, without slashes at either end: `jwt`.
    pub mount: String,
    pub namespace: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub auth: VaultAuth,
    /// Re-push this often even when nothing changed.
    pub repair_interval: Duration,
}

impl PushTarget {
    /// The target's name in logs, metrics and answers: `<addr>/<namespace>/<mount>`.
    pub fn name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}", self.addr, ns, self.mount),
            None => format!("{}/{}", self.addr, self.mount),
        }
    }
}

/// The keys of one `[[push]]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PushKey {
    Addr,
    Mount,
    Namespace,
    CaFile,
    TokenFile,
    RoleId,
    SecretIdFile,
    RepairInterval,
}

const PUSH_KEYS: [PushKey; 8] = [
    PushKey::Addr,
    PushKey::Mount,
    PushKey::Namespace,
    PushKey::CaFile,
    PushKey::TokenFile,
    PushKey::RoleId,
    PushKey::SecretIdFile,
    PushKey::RepairInterval,
];

impl PushKey {
    fn spec(self) -> (&'static str, Kind) {
        match self {
            PushKey::Addr => ("addr", Kind::Str),
            PushKey::Mount => ("mount", Kind::Str),
            PushKey::Namespace => ("namespace", Kind::Str),
            PushKey::CaFile => ("ca_file", Kind::Str),
            PushKey::TokenFile => ("token_file", Kind::Str),
            PushKey::RoleId => ("role_id", Kind::Str),
            PushKey::SecretIdFile => ("secret_id_file", Kind::Str),
            PushKey::RepairInterval => ("repair_interval", Kind::Duration),
        }
    }
}

/// `push[<index>].<key>`, as problems name a key of a `[[push]]` table.
struct At(usize, &'static str);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "push[{}].{}", self.0, self.1)
    }
}

/// The values of one table, typed; problems for the ones that are not.
struct Entry<'a> {
    index: usize,
    table: &'a toml::Table,
}

impl Entry<'_> {
    fn get(&self, key: PushKey, problems: &mut Vec<Problem>) -> Option<RawValue> {
        let (name, kind) = key.spec();
        let value = self.table.get(name)?;
        from_toml(value, kind)
            .map_err(|why| {
                let at = At(self.index, name).to_string();
                problems.push(Problem::new(
                    &at,
                    format!("{why} (expected {})", kind.expected()),
                ));
            })
            .ok()
    }

    fn str(&self, key: PushKey, problems: &mut Vec<Problem>) -> Option<String> {
        match self.get(key, problems)? {
            RawValue::Str(s) => Some(s),
            _ => None,
        }
    }

    fn problem(&self, key: PushKey, message: impl fmt::Display) -> Problem {
        Problem::new(&At(self.index, key.spec().0).to_string(), message)
    }
}

/// The push targets of the `push` value of the file (absent: none), or problems.
pub fn targets(value: Option<&Value>, problems: &mut Vec<Problem>) -> Vec<PushTarget> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Some(tables) = value.as_array().filter(|a| a.iter().all(Value::is_table)) else {
        problems.push(Problem::new(
            "push",
            "must be an array of tables, each written [[push]]",
        ));
        return Vec::new();
    };
    let targets: Vec<PushTarget> = tables
        .iter()
        .filter_map(Value::as_table)
        .enumerate()
        .filter_map(|(index, table)| target(&Entry { index, table }, problems))
        .collect();
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|o| o.name() == t.name()) {
            problems.push(Problem::new(
                &format!("push[{i}]"),
                format!("{} is already a push target", t.name()),
            ));
        }
    }
    targets
}

fn target(entry: &Entry<'_>, problems: &mut Vec<Problem>) -> Option<PushTarget> {
    let before = problems.len();
    for name in entry.table.keys() {
        if !PUSH_KEYS.iter().any(|k| k.spec().0 == name) {
            problems.push(Problem::new(
                &format!("push[{}].{name}", entry.index),
                "unknown key; see the README's table of configuration keys",
            ));
        }
    }
    let addr = addr(entry, problems);
    let mount = mount(entry, problems);
    let namespace = entry.str(PushKey::Namespace, problems);
    let ca_file = entry.str(PushKey::CaFile, problems).map(PathBuf::from);
    let auth = auth(entry, problems);
    let repair_interval = match entry.get(PushKey::RepairInterval, problems) {
        Some(RawValue::Duration(d)) => d,
        _ => Duration::from_secs(300),
    };
    if repair_interval < Duration::from_secs(1) {
        problems.push(entry.problem(PushKey::RepairInterval, "must be at least 1s"));
    }
    if problems.len() > before {
        return None;
    }
    Some(PushTarget {
        addr: addr?,
        mount: mount?,
        namespace,
        ca_file,
        auth: auth?,
        repair_interval,
    })
}

fn addr(entry: &Entry<'_>, problems: &mut Vec<Problem>) -> Option<String> {
    let Some(addr) = entry.str(PushKey::Addr, problems) else {
        problems.push(entry.problem(
            PushKey::Addr,
            "is required: the Vault address, such as \"https://vault.internal:8200\"",
        ));
        return None;
    };
    vault::addr(&addr)
        .map_err(|why| problems.push(entry.problem(PushKey::Addr, why)))
        .ok()
}

fn mount(entry: &Entry<'_>, problems: &mut Vec<Problem>) -> Option<String> {
    let Some(mount) = entry.str(PushKey::Mount, problems) else {
        problems.push(entry.problem(
            PushKey::Mount,
            "is required: the JWT auth mount, such as \"jwt\"",
        ));
        return None;
    };
    vault::path(&mount, "mount path")
        .map_err(|why| problems.push(entry.problem(PushKey::Mount, why)))
        .ok()
}

fn auth(entry: &Entry<'_>, problems: &mut Vec<Problem>) -> Option<VaultAuth> {
    let token_file = entry.str(PushKey::TokenFile, problems);
    let role_id = entry.str(PushKey::RoleId, problems);
    let secret_id_file = entry.str(PushKey::SecretIdFile, problems);
    vault::auth(token_file, role_id, secret_id_file)
        .map_err(|(key, why)| {
            let key = match key {
                AuthKey::TokenFile => PushKey::TokenFile,
                AuthKey::RoleId => PushKey::RoleId,
                AuthKey::SecretIdFile => PushKey::SecretIdFile,
            };
            problems.push(entry.problem(key, why));
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<PushTarget>, Vec<String>) {
        let table: toml::Table = text.parse().unwrap();
        let mut problems = Vec::new();
        let targets = targets(table.get("push"), &mut problems);
        (targets, problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn every_table_is_read_with_defaults() {
        let (targets, problems) = parse(
            "[[push]]\naddr = \"https://v:8200/\"\nmount = \"/jwt/\"\ntoken_file = \"t\"\n\
             [[push]]\naddr = \"http://w\"\nmount = \"a/jwt\"\nrole_id = \"r\"\nsecret_id_file = \"s\"\nrepair_interval = \"10s\"\nnamespace = \"n\"\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(targets[0].addr, "https://v:8200");
        assert_eq!(targets[0].mount, "jwt");
        assert_eq!(targets[0].repair_interval, Duration::from_secs(300));
        assert_eq!(targets[1].name(), "http://w/n/a/jwt");
        assert!(matches!(targets[1].auth, VaultAuth::AppRole { .. }));
    }

    #[test]
    fn every_problem_names_its_table() {
        let (_, problems) = parse(
            "[[push]]\nmount = \"jwt\"\ntoken_file = \"t\"\nrole_id = \"r\"\n\
             [[push]]\naddr = \"vault:8200\"\nmount = \"../x\"\nbogus = 1\nrepair_interval = \"0s\"\ntoken_file = \"t\"\n",
        );
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "push[0].addr",
                "push[0].token_file",
                "push[1].bogus",
                "push[1].addr",
                "push[1].mount",
                "push[1].repair_interval"
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn push_must_be_an_array_of_tables() {
        let (_, problems) = parse("push = \"x\"\n");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("push: "));
    }
}
