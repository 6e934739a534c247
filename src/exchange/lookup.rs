//! TFE's rules for reading one workspace variable: the plain, `_<TAG>` and `TFC_DEFAULT_`
//! forms, `PLAN_`/`APPLY_` falling back to `RUN_`, the enable switches and their tags, and the
//! rules for single values (names, paths, seconds). Every failure names the variable, the value
//! it got and what is allowed.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::token::claims::RunPhase;

/// Which configuration of a family: the default one, or one named by its tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigName {
    Default,
    Tag(String),
}

impl ConfigName {
    /// `default`, or the tag as written.
    pub fn as_str(&self) -> &str {
        match self {
            ConfigName::Default => "default",
            ConfigName::Tag(tag) => tag,
        }
    }

    /// What this configuration adds to a variable's name: nothing, or `_<TAG>`.
    pub fn suffix(&self) -> String {
        match self {
            ConfigName::Default => String::new(),
            ConfigName::Tag(tag) => format!("_{tag}"),
        }
    }
}

/// A workspace variable that is not acceptable (a 400 at the API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct VariableError {
    pub variable: String,
    pub message: String,
}

impl VariableError {
    pub fn new(variable: &str, message: impl Into<String>) -> VariableError {
        VariableError {
            variable: variable.to_owned(),
            message: message.into(),
        }
    }
}

/// Reads the request's `variables` object, refusing a name given twice: a plain map keeps the
/// last one, so the caller could not tell which value was used.
pub fn unique_variables<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of variable names and string values")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut variables = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                if variables.contains_key(&name) {
                    return Err(serde::de::Error::custom(format_args!(
                        "variable {} is given twice: send each variable once",
                        shown(&name)
                    )));
                }
                let value = map.next_value::<String>()?;
                variables.insert(name, value);
            }
            Ok(variables)
        }
    }
    deserializer.deserialize_map(Unique)
}

/// A variable found, with the name it was found under.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub variable: &'a str,
    pub value: &'a str,
}

/// The workspace variables of one run.
#[derive(Debug, Clone, Copy)]
pub struct Variables<'a> {
    map: &'a BTreeMap<String, String>,
    pub phase: RunPhase,
}

impl<'a> Variables<'a> {
    pub fn new(map: &'a BTreeMap<String, String>, phase: RunPhase) -> Variables<'a> {
        Variables { map, phase }
    }

    fn entry(&self, name: &str) -> Option<Found<'a>> {
        self.map.get_key_value(name).map(|(k, v)| Found {
            variable: k.as_str(),
            value: v.as_str(),
        })
    }

    /// `name` for `config`: `name[_TAG]`, else its `TFC_DEFAULT_` form.
    pub fn get(&self, name: &str, config: &ConfigName) -> Option<Found<'a>> {
        self.own(name, config).or_else(|| self.default_form(name))
    }

    fn own(&self, name: &str, config: &ConfigName) -> Option<Found<'a>> {
        self.entry(&format!("{name}{}", config.suffix()))
    }

    fn default_form(&self, name: &str) -> Option<Found<'a>> {
        self.entry(&default_name(name))
    }

    /// A per-phase variable `<prefix>_<PHASE>_<suffix>` falling back to `<prefix>_RUN_<suffix>`.
    /// The configuration's own forms come first (its phase, then its `RUN_`), then the
    /// `TFC_DEFAULT_` forms in the same order: a value set for this configuration is never
    /// overridden by a default for all of them.
    pub fn phased(&self, prefix: &str, suffix: &str, config: &ConfigName) -> Option<Found<'a>> {
        let phase = match self.phase {
            RunPhase::Plan => "PLAN",
            RunPhase::Apply => "APPLY",
        };
        let phased = format!("{prefix}_{phase}_{suffix}");
        let run = format!("{prefix}_RUN_{suffix}");
        self.own(&phased, config)
            .or_else(|| self.own(&run, config))
            .or_else(|| self.default_form(&phased))
            .or_else(|| self.default_form(&run))
    }

    /// Like `phased`, but required: the error names what to set.
    pub fn phased_required(
        &self,
        prefix: &str,
        suffix: &str,
        config: &ConfigName,
    ) -> Result<Found<'a>, VariableError> {
        self.phased(prefix, suffix, config).ok_or_else(|| {
            let s = config.suffix();
            let phase = self.phase.as_str().to_ascii_uppercase();
            VariableError::new(
                &format!("{prefix}_RUN_{suffix}{s}"),
                format!("is required: set {prefix}_RUN_{suffix}{s}, or {prefix}_{phase}_{suffix}{s} for a {} run", self.phase.as_str()),
            )
        })
    }

    /// Every variable named `name` (the default configuration) or `name_<TAG>`, with its
    /// configuration; no `TFC_DEFAULT_` form (manual audiences have none).
    pub fn tagged(&self, name: &str) -> Result<Vec<(ConfigName, Found<'a>)>, VariableError> {
        let mut found = Vec::new();
        for (key, value) in self.map {
            let config = match after(key, name) {
                None => continue,
                Some(None) => ConfigName::Default,
                Some(Some(tag)) => ConfigName::Tag(check_tag(key, tag)?),
            };
            let entry = Found {
                variable: key.as_str(),
                value: value.as_str(),
            };
            found.push((config, entry));
        }
        Ok(found)
    }

    /// The configurations `enable` switches on: `enable=true` (default) and `enable_<TAG>=true`.
    /// `skip` is a suffix that belongs to another variable (`TYPE` for `…_AUTH_TYPE`).
    pub fn enabled(
        &self,
        enable: &str,
        skip: Option<&str>,
    ) -> Result<Vec<ConfigName>, VariableError> {
        let no_default = default_name(enable);
        let mut configs = Vec::new();
        for (key, value) in self.map {
            if let Some(rest) = after(key, &no_default)
                && !is_other(rest, skip)
            {
                return Err(VariableError::new(
                    key,
                    format!(
                        "an enable switch has no TFC_DEFAULT_ form: set {enable} or {enable}_<TAG> to \"true\" instead"
                    ),
                ));
            }
            let Some(rest) = after(key, enable) else {
                continue;
            };
            if is_other(rest, skip) || !switch(key, value)? {
                continue;
            }
            configs.push(match rest {
                None => ConfigName::Default,
                Some(tag) => ConfigName::Tag(check_tag(key, tag)?),
            });
        }
        Ok(configs)
    }
}

/// The `TFC_DEFAULT_` form of `TFC_<rest>`.
fn default_name(name: &str) -> String {
    format!("TFC_DEFAULT_{}", name.strip_prefix("TFC_").unwrap_or(name))
}

/// `Some(None)` when `key` is `name`, `Some(Some(tag))` when it is `name_<tag>`.
fn after<'k>(key: &'k str, name: &str) -> Option<Option<&'k str>> {
    let rest = key.strip_prefix(name)?;
    if rest.is_empty() {
        return Some(None);
    }
    rest.strip_prefix('_').map(Some)
}

/// Whether the tag part `rest` is really another variable's suffix (`TYPE`, `TYPE_<TAG>`).
fn is_other(rest: Option<&str>, skip: Option<&str>) -> bool {
    let (Some(rest), Some(skip)) = (rest, skip) else {
        return false;
    };
    rest == skip || rest.strip_prefix(skip).is_some_and(|r| r.starts_with('_'))
}

fn switch(key: &str, value: &str) -> Result<bool, VariableError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(VariableError::new(
            key,
            format!(
                "{} is not a switch: use \"true\" or \"false\"",
                shown(other)
            ),
        )),
    }
}

fn check_tag(key: &str, tag: &str) -> Result<String, VariableError> {
    if tag.is_empty() {
        return Err(VariableError::new(
            key,
            "the tag after the last '_' is empty: a tag holds letters, digits and underscores",
        ));
    }
    if tag == "TYPE" {
        return Err(VariableError::new(
            key,
            "TYPE is a reserved keyword and cannot be a tag",
        ));
    }
    if !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(VariableError::new(
            key,
            format!(
                "{} is not a tag: a tag holds letters, digits and underscores only",
                shown(tag)
            ),
        ));
    }
    Ok(tag.to_owned())
}

/// A value quoted for an error message, cut at 40 characters.
pub fn shown(value: &str) -> String {
    if value.chars().count() <= 40 {
        return format!("{value:?}");
    }
    let cut: String = value.chars().take(40).collect();
    format!("{cut:?}…")
}

/// A role, roleset or account name: 1–128 letters, digits, `-`, `_`, `.` or `@`, not `.` or `..`.
pub fn name_value(found: Found<'_>) -> Result<String, VariableError> {
    let v = found.value;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        && v != "."
        && v != "..";
    if !ok {
        return Err(VariableError::new(
            found.variable,
            format!(
                "{} is not a name: use 1 to 128 letters, digits, '-', '_', '.' or '@'",
                shown(v)
            ),
        ));
    }
    Ok(v.to_owned())
}

/// A mount path or namespace: segments of letters, digits, `-`, `_` and `.`, joined by `/`.
pub fn path_value(found: Found<'_>) -> Result<String, VariableError> {
    let v = found.value;
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if v.len() > 256 || !v.split('/').all(segment_ok) {
        return Err(VariableError::new(
            found.variable,
            format!(
                "{} is not a path: use segments of letters, digits, '-', '_' and '.' joined by '/', without a leading or trailing '/'",
                shown(v)
            ),
        ));
    }
    Ok(v.to_owned())
}

/// Whole seconds between `min` and `max`.
pub fn seconds_value(found: Found<'_>, min: u64, max: u64) -> Result<u64, VariableError> {
    let parsed = if found.value.bytes().all(|b| b.is_ascii_digit()) {
        found.value.parse::<u64>().ok()
    } else {
        None
    };
    match parsed {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(VariableError::new(
            found.variable,
            format!(
                "{} is not a number of seconds from {min} to {max}",
                shown(found.value)
            ),
        )),
    }
}

/// One of `allowed`.
pub fn choice_value<'c>(found: Found<'_>, allowed: &[&'c str]) -> Result<&'c str, VariableError> {
    allowed
        .iter()
        .find(|a| **a == found.value)
        .copied()
        .ok_or_else(|| {
            VariableError::new(
                found.variable,
                format!(
                    "{} is not supported: use one of {}",
                    shown(found.value),
                    allowed.join(", ")
                ),
            )
        })
}

/// `http(s)://host[:port]` (a trailing `/` is dropped), as an origin.
pub fn address_value(found: Found<'_>) -> Result<String, VariableError> {
    let bad = || {
        VariableError::new(
            found.variable,
            format!(
                "{} is not a Vault address: use http(s)://host[:port], without a path, query or credentials",
                shown(found.value)
            ),
        )
    };
    let url = reqwest::Url::parse(found.value).map_err(|_| bad())?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if !plain {
        return Err(bad());
    }
    Ok(url.origin().ascii_serialization())
}

/// Base64 of one or more PEM certificates.
pub fn ca_value(found: Found<'_>) -> Result<Vec<u8>, VariableError> {
    let compact: Vec<u8> = found
        .value
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let pem = STANDARD.decode(compact).map_err(|_| {
        VariableError::new(
            found.variable,
            format!(
                "{} is not base64: use the base64 of a PEM CA certificate (base64 -w0 ca.pem)",
                shown(found.value)
            ),
        )
    })?;
    crate::vault::roots_from_pem(&pem).map_err(|e| {
        VariableError::new(
            found.variable,
            format!("{} decodes to no usable CA: {e}", shown(found.value)),
        )
    })?;
    Ok(pem)
}

/// An IAM role ARN.
pub fn role_arn_value(found: Found<'_>) -> Result<String, VariableError> {
    let v = found.value;
    let ok = v.starts_with("arn:") && v.len() <= 2048 && v.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(VariableError::new(
            found.variable,
            format!(
                "{} is not a role ARN: use arn:aws:iam::<account>:role/<name>",
                shown(v)
            ),
        ));
    }
    Ok(v.to_owned())
}
