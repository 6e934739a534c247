//! The raw configuration: the TOML document with `TFE_OIDC_*` environment overrides applied.
//!
//! This module owns the schema (every key, its type, its environment variable) and turns text into
//! typed values, collecting every problem instead of stopping at the first. It knows nothing of what
//! the values mean together: cross-key rules live in `config/mod.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::{Table, Value};

use super::Problem;

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

/// Every key the configuration accepts, as a dotted path, with its type.
pub const SCHEMA: &[(&str, Kind)] = &[
    ("issuer", Kind::Str),
    ("discovery.listen", Kind::Str),
    ("discovery.tls_cert", Kind::Str),
    ("discovery.tls_key", Kind::Str),
    ("discovery.client_ca", Kind::Str),
    ("discovery.allow", Kind::StrList),
    ("discovery.jwks_max_age", Kind::Duration),
    ("discovery.insecure_http", Kind::Bool),
    ("discovery.max_connections", Kind::Int),
    ("api.listen", Kind::Str),
    ("api.tls_cert", Kind::Str),
    ("api.tls_key", Kind::Str),
    ("api.client_ca", Kind::Str),
    ("api.allow", Kind::StrList),
    ("api.insecure_http", Kind::Bool),
    ("api.max_connections", Kind::Int),
    ("api.tokens_file", Kind::Str),
    ("api.max_body", Kind::Size),
    ("tokens.default_audience", Kind::Str),
    ("tokens.audiences", Kind::StrList),
    ("tokens.default_ttl", Kind::Duration),
    ("tokens.max_ttl", Kind::Duration),
    ("keys.store", Kind::Str),
    ("keys.dir", Kind::Str),
    ("keys.rsa_bits", Kind::Int),
    ("keys.rotation_period", Kind::Duration),
    ("audit.path", Kind::Str),
    ("exchange.vault_timeout", Kind::Duration),
    ("exchange.allowed_vault_addrs", Kind::StrList),
];

/// Environment variables that start with `TFE_OIDC_` but are not configuration keys.
const NOT_KEYS: &[&str] = &[
    "TFE_OIDC_CONFIG",
    "TFE_OIDC_LOG_FORMAT",
    "TFE_OIDC_LOG",
    // read by scripts/test and the test suite, never by the service
    "TFE_OIDC_ALLOW_SKIP",
    "TFE_OIDC_SKIP_INSTALL",
    "TFE_OIDC_TEST_THREADS",
];

/// The environment variable that overrides `path`: `keys.dir` → `TFE_OIDC_KEYS_DIR`.
pub fn env_name(path: &str) -> String {
    format!("TFE_OIDC_{}", path.replace('.', "_").to_ascii_uppercase())
}

/// A typed value of one key, as written.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Str(String),
    Duration(Duration),
    Size(u64),
    Int(i64),
    Bool(bool),
    StrList(Vec<String>),
}

/// The keys that were set, by dotted path, each typed according to the schema.
#[derive(Debug, Default)]
pub struct Raw {
    values: BTreeMap<&'static str, RawValue>,
}

impl Raw {
    /// Parses `toml_text` (empty for "no file"), applies `env`, and checks every key's type.
    pub fn parse(toml_text: &str, env: &[(String, String)], problems: &mut Vec<Problem>) -> Raw {
        let table = match toml_text.parse::<Table>() {
            Ok(table) => table,
            Err(e) => {
                problems.push(Problem::new(
                    "(file)",
                    format!("not valid TOML: {}", e.message()),
                ));
                Table::new()
            }
        };
        let mut raw = Raw::default();
        check_unknown_keys(&table, "", problems);
        for &(path, kind) in SCHEMA {
            if let Some(value) = lookup(&table, path) {
                raw.set(path, kind, from_toml(value, kind), problems);
            }
        }
        raw.apply_env(env, problems);
        raw
    }

    fn apply_env(&mut self, env: &[(String, String)], problems: &mut Vec<Problem>) {
        for (name, text) in env {
            if !name.starts_with("TFE_OIDC_") || NOT_KEYS.contains(&name.as_str()) {
                continue;
            }
            match SCHEMA.iter().find(|(path, _)| env_name(path) == *name) {
                Some(&(path, kind)) => self.set(path, kind, from_env(text, kind), problems),
                None => problems.push(Problem::new(
                    name,
                    "unknown environment override; see the README's table of configuration keys",
                )),
            }
        }
    }

    fn set(
        &mut self,
        path: &'static str,
        kind: Kind,
        parsed: Result<RawValue, String>,
        problems: &mut Vec<Problem>,
    ) {
        match parsed {
            Ok(value) => {
                self.values.insert(path, value);
            }
            Err(why) => problems.push(Problem::new(
                path,
                format!("{why} (expected {})", kind_name(kind)),
            )),
        }
    }

    pub fn str(&self, path: &str) -> Option<&str> {
        match self.values.get(path) {
            Some(RawValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn duration(&self, path: &str) -> Option<Duration> {
        match self.values.get(path) {
            Some(RawValue::Duration(d)) => Some(*d),
            _ => None,
        }
    }

    pub fn size(&self, path: &str) -> Option<u64> {
        match self.values.get(path) {
            Some(RawValue::Size(n)) => Some(*n),
            _ => None,
        }
    }

    pub fn int(&self, path: &str) -> Option<i64> {
        match self.values.get(path) {
            Some(RawValue::Int(n)) => Some(*n),
            _ => None,
        }
    }

    pub fn bool(&self, path: &str) -> Option<bool> {
        match self.values.get(path) {
            Some(RawValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn list(&self, path: &str) -> Option<&[String]> {
        match self.values.get(path) {
            Some(RawValue::StrList(l)) => Some(l),
            _ => None,
        }
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Str => "a string",
        Kind::Duration => "a duration such as \"90s\", \"20m\", \"24h\" or \"30d\"",
        Kind::Size => "a size such as \"64KiB\" or \"1MiB\"",
        Kind::Int => "an integer",
        Kind::Bool => "true or false",
        Kind::StrList => "a list of strings",
    }
}

fn lookup<'a>(table: &'a Table, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

fn check_unknown_keys(table: &Table, prefix: &str, problems: &mut Vec<Problem>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let is_leaf = SCHEMA.iter().any(|(p, _)| *p == path);
        let is_section = SCHEMA
            .iter()
            .any(|(p, _)| p.starts_with(&format!("{path}.")));
        match value {
            Value::Table(inner) if is_section => check_unknown_keys(inner, &path, problems),
            _ if is_leaf => {}
            _ if is_section => problems.push(Problem::new(&path, "must be a table (a [section])")),
            _ => problems.push(Problem::new(
                &path,
                "unknown key; see the README's table of configuration keys",
            )),
        }
    }
}

fn from_toml(value: &Value, kind: Kind) -> Result<RawValue, String> {
    match (kind, value) {
        (Kind::Str, Value::String(s)) => Ok(RawValue::Str(s.clone())),
        (Kind::Duration | Kind::Size, Value::String(s)) => from_env(s, kind),
        (Kind::Int, Value::Integer(n)) => Ok(RawValue::Int(*n)),
        (Kind::Bool, Value::Boolean(b)) => Ok(RawValue::Bool(*b)),
        (Kind::Size, Value::Integer(n)) if *n >= 0 => Ok(RawValue::Size(*n as u64)),
        (Kind::StrList, Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "a list item is not a string".to_owned())
            })
            .collect::<Result<_, _>>()
            .map(RawValue::StrList),
        (_, other) => Err(format!("found a {}", other.type_str())),
    }
}

fn from_env(text: &str, kind: Kind) -> Result<RawValue, String> {
    let text = text.trim();
    match kind {
        Kind::Str => Ok(RawValue::Str(text.to_owned())),
        Kind::Duration => humantime::parse_duration(text)
            .map(RawValue::Duration)
            .map_err(|e| format!("{text:?} is not a duration: {e}")),
        Kind::Size => parse_size(text).map(RawValue::Size),
        Kind::Int => text
            .parse()
            .map(RawValue::Int)
            .map_err(|_| format!("{text:?} is not an integer")),
        Kind::Bool => match text {
            "true" | "1" => Ok(RawValue::Bool(true)),
            "false" | "0" => Ok(RawValue::Bool(false)),
            _ => Err(format!("{text:?} is not a boolean")),
        },
        Kind::StrList => Ok(RawValue::StrList(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )),
    }
}

/// Parses `64KiB`, `1MiB`, `512B`, `1000` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        _ => return Err(format!("{text:?} has an unknown unit (use B, KiB or MiB)")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> (Raw, Vec<Problem>) {
        let env: Vec<_> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut problems = Vec::new();
        (Raw::parse(text, &env, &mut problems), problems)
    }

    #[test]
    fn env_overrides_file_and_splits_lists() {
        let (raw, problems) = parse(
            "[keys]\ndir = \"a\"\n",
            &[
                ("TFE_OIDC_KEYS_DIR", "b"),
                ("TFE_OIDC_TOKENS_AUDIENCES", "x, y"),
            ],
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(raw.str("keys.dir"), Some("b"));
        assert_eq!(raw.list("tokens.audiences").unwrap(), ["x", "y"]);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let (_, problems) = parse(
            "bogus = 1\n[keys]\nrsa_bits = \"many\"\n[tokens]\nmax_ttl = \"forever\"\n",
            &[("TFE_OIDC_NOPE", "1")],
        );
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["bogus", "tokens.max_ttl", "keys.rsa_bits", "TFE_OIDC_NOPE"]
        );
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("17"), Ok(17));
        assert!(parse_size("1GiB").is_err());
    }
}
