//! The `[[api.federation]]` tables: upstream OIDC issuers whose tokens are accepted as API
//! callers (docs/reference.md §2.3; how they are checked: §4.1).
//!
//! Each table is read on its own, and every problem names its table by position:
//! `api.federation[0].issuer`. Federation rules have no `TFE_OIDC_*` overrides. How a token is
//! checked against a rule is `crate::http::federation`'s.

use std::path::PathBuf;

use toml::Value;

use super::Problem;
use super::forms::is_loopback;
use crate::http::auth::Scope;
use crate::http::policy::{MAX_GLOB, SubTemplate};

/// One upstream issuer and what its tokens may do.
#[derive(Debug, Clone)]
pub struct FederationRule {
    /// The caller's name in audit events is `<name>:<upstream sub>`.
    pub name: String,
    /// The upstream `iss`, byte for byte; discovery is `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The upstream token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// PEM CA certificate(s) for the issuer's discovery and JWKS (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Claim name → globs; every claim must match one of its globs.
    pub bound_claims: Vec<(String, Vec<String>)>,
    pub scopes: Vec<Scope>,
    /// The `sub` patterns, with `{claim}` substituted per token.
    pub sub: Vec<SubTemplate>,
}

impl FederationRule {
    /// The warning an operator needs about this rule, if any: without `bound_claims`, every
    /// token of its issuer with one of its audiences is accepted, and on an issuer that many
    /// organizations share (GitHub Actions, gitlab.com) any job may ask for any audience.
    pub fn warning(&self) -> Option<String> {
        self.bound_claims.is_empty().then(|| {
            format!(
                "api.federation rule {:?} has no bound_claims: every token {} signs for one of its audiences is accepted, and on a shared issuer any job can ask for that audience; bind the project, repository or environment (see docs/threat-model.md)",
                self.name, self.issuer
            )
        })
    }
}

const KEYS: [&str; 7] = [
    "name",
    "issuer",
    "audiences",
    "ca_file",
    "bound_claims",
    "scopes",
    "sub",
];

/// One table and the problems found in it.
struct Entry<'a> {
    index: usize,
    table: &'a toml::Table,
    problems: &'a mut Vec<Problem>,
}

impl Entry<'_> {
    fn problem(&mut self, key: &str, message: impl std::fmt::Display) {
        let at = format!("api.federation[{}].{key}", self.index);
        self.problems.push(Problem::new(&at, message));
    }

    fn str(&mut self, key: &str) -> Option<String> {
        match self.table.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.problem(
                    key,
                    format!("found a {} (expected a string)", other.type_str()),
                );
                None
            }
        }
    }

    /// A non-empty list of strings; `what` says what its items are, for the message.
    fn list(&mut self, key: &str, what: &str) -> Option<Vec<String>> {
        let items = match self.table.get(key) {
            None => {
                self.problem(key, format!("is required: a list of {what}"));
                return None;
            }
            Some(value) => string_list(value),
        };
        match items {
            Some(items) if !items.is_empty() && items.iter().all(|s| !s.is_empty()) => Some(items),
            _ => {
                self.problem(key, format!("must be a non-empty list of {what}"));
                None
            }
        }
    }
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The rules of the `api.federation` value of the file (absent: none), or problems.
pub fn rules(value: Option<&Value>, problems: &mut Vec<Problem>) -> Vec<FederationRule> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Some(tables) = value.as_array().filter(|a| a.iter().all(Value::is_table)) else {
        problems.push(Problem::new(
            "api.federation",
            "must be an array of tables, each written [[api.federation]]",
        ));
        return Vec::new();
    };
    let mut rules: Vec<FederationRule> = Vec::new();
    for (index, table) in tables.iter().filter_map(Value::as_table).enumerate() {
        let mut entry = Entry {
            index,
            table,
            problems,
        };
        if let Some(rule) = rule(&mut entry) {
            if rules.iter().any(|r| r.name == rule.name) {
                entry.problem(
                    "name",
                    format!("{:?} names another rule already", rule.name),
                );
            }
            rules.push(rule);
        }
    }
    rules
}

fn rule(entry: &mut Entry<'_>) -> Option<FederationRule> {
    let before = entry.problems.len();
    for key in entry.table.keys() {
        if !KEYS.contains(&key.as_str()) {
            entry.problem(key, "unknown key; see docs/reference.md §2.3");
        }
    }
    let name = name(entry);
    let issuer = issuer(entry);
    let audiences = entry.list(
        "audiences",
        "audiences, one of which the upstream aud must hold",
    );
    let ca_file = entry.str("ca_file").map(PathBuf::from);
    let bound_claims = bound_claims(entry);
    let scopes = scopes(entry);
    let sub = sub(entry);
    if entry.problems.len() > before {
        return None;
    }
    Some(FederationRule {
        name: name?,
        issuer: issuer?,
        audiences: audiences?,
        ca_file,
        bound_claims,
        scopes: scopes?,
        sub: sub?,
    })
}

fn name(entry: &mut Entry<'_>) -> Option<String> {
    let Some(name) = entry.str("name") else {
        entry.problem("name", "is required: the rule's name, such as \"gitlab\"");
        return None;
    };
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        entry.problem("name", "use 1 to 64 letters, digits, '-' and '_'");
        return None;
    }
    Some(name)
}

fn issuer(entry: &mut Entry<'_>) -> Option<String> {
    let Some(text) = entry.str("issuer") else {
        entry.problem(
            "issuer",
            "is required: the upstream issuer URL, exactly as its tokens' iss claim",
        );
        return None;
    };
    match check_issuer(&text) {
        Ok(()) => Some(text),
        Err(why) => {
            entry.problem("issuer", why);
            None
        }
    }
}

/// An upstream issuer: an https URL (http only on a loopback address) without query or fragment.
fn check_issuer(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err("must have no query, fragment or user name".into());
    }
    let Some(host) = url.host_str() else {
        return Err("must name a host".into());
    };
    let loopback = match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) => is_loopback(ip),
        Err(_) => host == "localhost",
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err("must be https:// (http:// only on a loopback address)".into()),
        other => Err(format!("{other}:// is not https://")),
    }
}

fn bound_claims(entry: &mut Entry<'_>) -> Vec<(String, Vec<String>)> {
    let Some(value) = entry.table.get("bound_claims") else {
        return Vec::new();
    };
    let Some(table) = value.as_table() else {
        entry.problem(
            "bound_claims",
            "must be a table of claim = \"glob\" or claim = [\"glob\", ...]",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (claim, value) in table {
        let globs = match value {
            Value::String(s) => Some(vec![s.clone()]),
            other => string_list(other),
        };
        match globs {
            Some(globs)
                if !globs.is_empty()
                    && globs.iter().all(|g| !g.is_empty() && g.len() <= MAX_GLOB) =>
            {
                out.push((claim.clone(), globs))
            }
            _ => entry.problem(
                &format!("bound_claims.{claim}"),
                format!("must be a glob or a non-empty list of globs (1 to {MAX_GLOB} bytes each)"),
            ),
        }
    }
    out
}

fn scopes(entry: &mut Entry<'_>) -> Option<Vec<Scope>> {
    let names = entry.list("scopes", "scopes: tokens, credentials")?;
    let mut scopes = Vec::new();
    for name in names {
        match name.as_str() {
            "tokens" => scopes.push(Scope::Tokens),
            "credentials" => scopes.push(Scope::Credentials),
            "keys" => entry.problem(
                "scopes",
                "keys is not for federated callers: give key operations a static token",
            ),
            other => entry.problem(
                "scopes",
                format!("unknown scope {other:?}: use tokens, credentials or both"),
            ),
        }
    }
    Some(scopes)
}

fn sub(entry: &mut Entry<'_>) -> Option<Vec<SubTemplate>> {
    let patterns = entry.list(
        "sub",
        "sub patterns, such as \"organization:acme:project:*:workspace:{environment}:run_phase:*\"",
    )?;
    let mut out = Vec::new();
    for pattern in patterns {
        match SubTemplate::parse(&pattern) {
            Ok(t) => out.push(t),
            Err(e) => entry.problem("sub", format!("{pattern:?}: {e}")),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<FederationRule>, Vec<String>) {
        let table: toml::Table = text.parse().unwrap();
        let mut problems = Vec::new();
        let value = table.get("api").and_then(|a| a.get("federation"));
        let rules = rules(value, &mut problems);
        (rules, problems.iter().map(|p| p.to_string()).collect())
    }

    const GOOD: &str = r#"[[api.federation]]
name = "gitlab"
issuer = "https://gitlab.example.com"
audiences = ["https://tfe-oidc.example.com"]
bound_claims = { namespace_path = "infra", ref = ["main", "release-*"] }
scopes = ["credentials"]
sub = ["organization:acme:project:*:workspace:{project_name}:run_phase:*"]
"#;

    #[test]
    fn a_rule_is_read_whole() {
        let (rules, problems) = parse(GOOD);
        assert!(problems.is_empty(), "{problems:?}");
        let rule = &rules[0];
        assert_eq!(rule.name, "gitlab");
        assert_eq!(rule.scopes, [Scope::Credentials]);
        assert_eq!(rule.bound_claims.len(), 2);
        assert_eq!(rule.sub.len(), 1);
    }

    #[test]
    fn every_problem_names_its_table_and_key() {
        let (_, problems) = parse(&format!(
            "{GOOD}[[api.federation]]\nname = \"gitlab\"\nissuer = \"http://gitlab.example.com\"\naudiences = []\nscopes = [\"keys\"]\nsub = [\"a:{{x\"]\nbogus = 1\n"
        ));
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "api.federation[1].bogus",
                "api.federation[1].issuer",
                "api.federation[1].audiences",
                "api.federation[1].scopes",
                "api.federation[1].sub",
            ],
            "{problems:?}"
        );
        let (_, problems) = parse(&format!("{GOOD}{GOOD}"));
        assert!(problems[0].contains("names another rule"), "{problems:?}");
    }

    #[test]
    fn http_is_for_loopback_only() {
        assert!(check_issuer("http://127.0.0.1:8200/v1/identity/oidc").is_ok());
        assert!(check_issuer("https://gitlab.example.com").is_ok());
        assert!(check_issuer("http://gitlab.example.com").is_err());
        assert!(check_issuer("https://x.example/?a=b").is_err());
    }
}
