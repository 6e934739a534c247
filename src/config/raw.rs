//! The raw configuration: the TOML document with `TFE_OIDC_*` environment overrides applied.
//!
//! This module turns text into values of each key's [`Kind`] (the keys themselves are `schema.rs`'s),
//! collecting every problem instead of stopping at the first. It knows nothing of what the values
//! mean together: cross-key rules live in `config/mod.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::{Table, Value};

use super::Problem;
use super::schema::{Key, Kind, SCHEMA};

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

/// Why one value could not be read as its key's kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// The TOML value has another type than the key.
    #[error("found a {0}")]
    WrongType(&'static str),
    /// An item of a TOML array is not a string.
    #[error("a list item is not a string")]
    ListItem,
    #[error("{text:?} is not a duration: {reason}")]
    Duration {
        text: String,
        reason: humantime::DurationError,
    },
    #[error("{0:?} is not an integer")]
    Integer(String),
    #[error("{0:?} is not a boolean")]
    Boolean(String),
    #[error("{0:?} is not a size")]
    Size(String),
    #[error("{0:?} has an unknown unit (use B, KiB or MiB)")]
    SizeUnit(String),
    /// The size does not fit in 64 bits.
    #[error("{0:?} is too large")]
    SizeTooLarge(String),
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

/// The keys that were set, each typed according to the schema.
#[derive(Debug, Default)]
pub struct Raw {
    values: BTreeMap<Key, RawValue>,
    /// The `push` array of tables, read by `push.rs` (its keys are per table, not in `SCHEMA`).
    push: Option<Value>,
    /// The `api.federation` array of tables, read by `federation.rs`.
    federation: Option<Value>,
}

impl Raw {
    /// Parses `toml_text` (empty for "no file"), applies `env`, and checks every key's type.
    pub fn parse(toml_text: &str, env: &[(String, String)], problems: &mut Vec<Problem>) -> Raw {
        let mut table = match toml_text.parse::<Table>() {
            Ok(table) => table,
            Err(e) => {
                problems.push(Problem::new(
                    "(file)",
                    format!("not valid TOML: {}", e.message()),
                ));
                Table::new()
            }
        };
        let federation = table
            .get_mut("api")
            .and_then(Value::as_table_mut)
            .and_then(|api| api.remove("federation"));
        let mut raw = Raw {
            push: table.remove("push"),
            federation,
            ..Raw::default()
        };
        check_unknown_keys(&table, "", problems);
        for &key in SCHEMA {
            if let Some(value) = lookup(&table, key.path()) {
                raw.set(key, from_toml(value, key.kind()), problems);
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
            match Key::from_env(name) {
                Some(key) => self.set(key, from_env(text, key.kind()), problems),
                None => problems.push(Problem::new(
                    name,
                    "unknown environment override; see the README's table of configuration keys",
                )),
            }
        }
    }

    fn set(&mut self, key: Key, parsed: Result<RawValue, ValueError>, problems: &mut Vec<Problem>) {
        match parsed {
            Ok(value) => {
                self.values.insert(key, value);
            }
            Err(why) => problems.push(Problem::at(
                key,
                format!("{why} (expected {})", key.kind().expected()),
            )),
        }
    }

    /// The value of `key`, a [`Kind::Str`] key.
    pub fn str(&self, key: Key) -> Option<&str> {
        match self.get(key, Kind::Str)? {
            RawValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn duration(&self, key: Key) -> Option<Duration> {
        match self.get(key, Kind::Duration)? {
            RawValue::Duration(d) => Some(*d),
            _ => None,
        }
    }

    pub fn size(&self, key: Key) -> Option<u64> {
        match self.get(key, Kind::Size)? {
            RawValue::Size(n) => Some(*n),
            _ => None,
        }
    }

    pub fn int(&self, key: Key) -> Option<i64> {
        match self.get(key, Kind::Int)? {
            RawValue::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn bool(&self, key: Key) -> Option<bool> {
        match self.get(key, Kind::Bool)? {
            RawValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn list(&self, key: Key) -> Option<&[String]> {
        match self.get(key, Kind::StrList)? {
            RawValue::StrList(l) => Some(l),
            _ => None,
        }
    }

    /// Whether `key` was set, in the file or the environment.
    pub fn is_set(&self, key: Key) -> bool {
        self.values.contains_key(&key)
    }

    /// The `api.federation` value of the file, as written.
    pub fn federation(&self) -> Option<&Value> {
        self.federation.as_ref()
    }

    /// The `push` value of the file, as written.
    pub fn push(&self) -> Option<&Value> {
        self.push.as_ref()
    }

    /// Reading a key as another kind than the schema's is a bug: it would always read as unset.
    fn get(&self, key: Key, kind: Kind) -> Option<&RawValue> {
        debug_assert_eq!(key.kind(), kind, "{key:?} is read as the wrong kind");
        self.values.get(&key)
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
    for (name, value) in table {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let is_leaf = Key::from_path(&path).is_some();
        let is_section = SCHEMA
            .iter()
            .any(|key| key.path().starts_with(&format!("{path}.")));
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

pub(super) fn from_toml(value: &Value, kind: Kind) -> Result<RawValue, ValueError> {
    match (kind, value) {
        (Kind::Str, Value::String(s)) => Ok(RawValue::Str(s.clone())),
        // A list of one may be written as its item.
        (Kind::StrList, Value::String(s)) => Ok(RawValue::StrList(vec![s.clone()])),
        (Kind::Duration | Kind::Size, Value::String(s)) => from_env(s, kind),
        (Kind::Int, Value::Integer(n)) => Ok(RawValue::Int(*n)),
        (Kind::Bool, Value::Boolean(b)) => Ok(RawValue::Bool(*b)),
        (Kind::Size, Value::Integer(n)) if *n >= 0 => Ok(RawValue::Size(*n as u64)),
        (Kind::StrList, Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or(ValueError::ListItem))
            .collect::<Result<_, _>>()
            .map(RawValue::StrList),
        (_, other) => Err(ValueError::WrongType(other.type_str())),
    }
}

fn from_env(text: &str, kind: Kind) -> Result<RawValue, ValueError> {
    let text = text.trim();
    match kind {
        Kind::Str => Ok(RawValue::Str(text.to_owned())),
        Kind::Duration => humantime::parse_duration(text)
            .map(RawValue::Duration)
            .map_err(|reason| ValueError::Duration {
                text: text.to_owned(),
                reason,
            }),
        Kind::Size => parse_size(text).map(RawValue::Size),
        Kind::Int => text
            .parse()
            .map(RawValue::Int)
            .map_err(|_| ValueError::Integer(text.to_owned())),
        Kind::Bool => match text {
            "true" | "1" => Ok(RawValue::Bool(true)),
            "false" | "0" => Ok(RawValue::Bool(false)),
            _ => Err(ValueError::Boolean(text.to_owned())),
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
pub fn parse_size(text: &str) -> Result<u64, ValueError> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| ValueError::Size(text.to_owned()))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        _ => return Err(ValueError::SizeUnit(text.to_owned())),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| ValueError::SizeTooLarge(text.to_owned()))
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
        assert_eq!(raw.str(Key::KeysDir), Some("b"));
        assert_eq!(raw.list(Key::Audiences).unwrap(), ["x", "y"]);
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
        assert_eq!(
            parse_size("1GiB").unwrap_err().to_string(),
            "\"1GiB\" has an unknown unit (use B, KiB or MiB)"
        );
        assert_eq!(
            parse_size("99999999999999999999").unwrap_err().to_string(),
            "\"99999999999999999999\" is not a size"
        );
    }
}
