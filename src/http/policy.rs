//! What each caller may obtain: the `sub` globs of its tokens-file line or of its
//! `[[api.federation]]` rule (docs/reference.md §4).
//!
//! Every route that signs computes the `sub` of the token it would sign and asks
//! [`authorize_sub`] before it signs anything or calls Vault. A glob has the meaning of Vault's
//! `bound_claims_type = "glob"`: `*` matches any run of characters, `:` included.

use serde_json::{Map, Value};

use super::auth::Caller;
use super::error::ApiError;
use crate::config::glob_match;
use crate::token::input::project_name;

/// The longest `sub` glob accepted, in bytes.
pub const MAX_GLOB: usize = 512;

/// The `sub` values a caller may obtain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubPolicy {
    /// A line without `sub=`: any organization, project, workspace, module or stack.
    Any,
    /// Only a `sub` that one of these globs matches.
    Globs(Vec<String>),
}

impl SubPolicy {
    pub fn permits(&self, sub: &str) -> bool {
        match self {
            SubPolicy::Any => true,
            SubPolicy::Globs(globs) => globs.iter().any(|g| glob_match(g, sub)),
        }
    }

    pub fn is_bound(&self) -> bool {
        matches!(self, SubPolicy::Globs(_))
    }
}

/// Why a `sub` glob is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("a sub glob is empty")]
    Empty,
    #[error("a sub glob is longer than {MAX_GLOB} bytes")]
    TooLong,
    #[error(
        "a sub glob may hold only printable ASCII characters without ',' (found {0:?}); spaces are allowed"
    )]
    Character(char),
}

/// Checks one glob as written in a tokens file, a flag or a `[[api.federation]]` rule.
pub fn check_glob(glob: &str) -> Result<(), GlobError> {
    if glob.is_empty() {
        return Err(GlobError::Empty);
    }
    if glob.len() > MAX_GLOB {
        return Err(GlobError::TooLong);
    }
    match glob
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ') || *c == ',')
    {
        Some(c) => Err(GlobError::Character(c)),
        None => Ok(()),
    }
}

/// Allows `caller` to obtain a token whose `sub` is `sub`, or refuses with 403 `forbidden` and
/// an audit event. Call it before anything is signed and before Vault is called.
pub fn authorize_sub(caller: &Caller, sub: &str, route: &'static str) -> Result<(), ApiError> {
    if caller.subs.permits(sub) {
        return Ok(());
    }
    tracing::warn!(target: "audit", event = "sub_forbidden", caller = %caller.name, sub, route, "a caller asked for a sub outside its policy: nothing was signed");
    Err(ApiError::Forbidden(format!(
        "caller {:?} may not obtain sub {sub:?}: it matches none of the caller's sub globs",
        caller.name
    )))
}

/// A `sub` pattern of an `[[api.federation]]` rule: a glob in which `{claim}` stands for the
/// value of that claim of the upstream token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Claim(String),
}

/// Why a `sub` pattern is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(transparent)]
    Glob(#[from] GlobError),
    #[error(
        "{{{0}}} is not a claim reference: write {{name}} with a claim name of letters, digits, '_' and '-'"
    )]
    ClaimName(String),
    #[error("a '{{' is not closed by a '}}'")]
    Unclosed,
    #[error("a '}}' has no '{{' before it")]
    Unopened,
}

/// Why an upstream token's claims cannot fill a `sub` pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("the upstream token has no claim {0:?}, which a sub pattern of this rule needs")]
    Missing(String),
    #[error("the upstream token's claim {0:?} is not a string, a number or a boolean")]
    NotText(String),
    #[error(
        "the upstream token's claim {claim:?} cannot be used in a sub pattern: {why} (the value must pass the rules of a name in a request, so it cannot add ':' or '*')"
    )]
    Value { claim: String, why: String },
}

impl SubTemplate {
    pub fn parse(text: &str) -> Result<SubTemplate, TemplateError> {
        check_glob(text)?;
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let open = rest.find('{').unwrap_or(rest.len());
            let (literal, tail) = rest.split_at(open);
            if literal.contains('}') {
                return Err(TemplateError::Unopened);
            }
            if !literal.is_empty() {
                parts.push(Part::Text(literal.to_owned()));
            }
            let Some(tail) = tail.strip_prefix('{') else {
                break;
            };
            let close = tail.find('}').ok_or(TemplateError::Unclosed)?;
            let name = &tail[..close];
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return Err(TemplateError::ClaimName(name.to_owned()));
            }
            parts.push(Part::Claim(name.to_owned()));
            rest = &tail[close + 1..];
        }
        Ok(SubTemplate {
            text: text.to_owned(),
            parts,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The glob this pattern makes with `claims`. A claim's value must be a name as a request's
    /// fields are (letters, digits, '-', '_', single inner spaces), so it adds no wildcard and
    /// no separator.
    pub fn render(&self, claims: &Map<String, Value>) -> Result<String, ClaimError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Claim(name) => out.push_str(&claim_name(claims, name)?),
            }
        }
        Ok(out)
    }
}

/// The value of claim `name`, as text that passes a request's name rules.
fn claim_name(claims: &Map<String, Value>, name: &str) -> Result<String, ClaimError> {
    let text = match claims.get(name) {
        None | Some(Value::Null) => return Err(ClaimError::Missing(name.to_owned())),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(_) => return Err(ClaimError::NotText(name.to_owned())),
    };
    project_name(name, &text).map_err(|e| ClaimError::Value {
        claim: name.to_owned(),
        why: e.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_substitute_claims_that_are_names_only() {
        let t = SubTemplate::parse("organization:acme:project:*:workspace:{project}:run_phase:*")
            .unwrap();
        let claims = |v: Value| {
            serde_json::json!({ "project": v })
                .as_object()
                .unwrap()
                .clone()
        };
        assert_eq!(
            t.render(&claims("prod".into())).unwrap(),
            "organization:acme:project:*:workspace:prod:run_phase:*"
        );
        for bad in ["a:b", "*", "", "a\nb", "\u{430}cme", "a  b", "x{y}"] {
            assert!(
                matches!(t.render(&claims(bad.into())), Err(ClaimError::Value { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(t.render(&Map::new()), Err(ClaimError::Missing(_))));
        assert!(matches!(
            t.render(&claims(serde_json::json!(["a"]))),
            Err(ClaimError::NotText(_))
        ));
        assert_eq!(SubTemplate::parse("a{b"), Err(TemplateError::Unclosed));
        assert_eq!(SubTemplate::parse("a}b"), Err(TemplateError::Unopened));
        assert!(matches!(
            SubTemplate::parse("a{b c}"),
            Err(TemplateError::ClaimName(_))
        ));
        assert_eq!(
            SubTemplate::parse("x:{a}{b}").unwrap().render(
                serde_json::json!({"a": "1", "b": true})
                    .as_object()
                    .unwrap()
            ),
            Ok("x:1true".into())
        );
    }

    #[test]
    fn globs_have_vaults_meaning() {
        let policy = SubPolicy::Globs(vec![
            "organization:acme:project:*:workspace:prod:run_phase:*".into(),
        ]);
        assert!(
            policy
                .permits("organization:acme:project:Default Project:workspace:prod:run_phase:plan")
        );
        // `*` matches `:` too, as in Vault: the pattern's author must anchor each part.
        assert!(policy.permits("organization:acme:project:a:b:workspace:prod:run_phase:apply"));
        assert!(!policy.permits("organization:acme:project:p:workspace:staging:run_phase:plan"));
        assert!(!policy.permits("organization:acme2:project:p:workspace:prod:run_phase:plan"));
        assert!(SubPolicy::Any.permits("anything"));
    }

    #[test]
    fn globs_refuse_separators_and_controls() {
        assert_eq!(check_glob(""), Err(GlobError::Empty));
        assert_eq!(check_glob("a,b"), Err(GlobError::Character(',')));
        assert_eq!(check_glob("a\tb"), Err(GlobError::Character('\t')));
        assert_eq!(check_glob("é"), Err(GlobError::Character('é')));
        assert!(check_glob(&"a".repeat(MAX_GLOB + 1)).is_err());
        assert!(check_glob("organization:acme:project:Default Project:*").is_ok());
    }
}
