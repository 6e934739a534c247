//! What each caller may obtain: the `sub` globs of its tokens-file line or of its
//! `[[api.federation]]` rule (docs/reference.md §4).
//!
//! Every route that signs computes the `sub` of the token it would sign and asks
//! [`authorize_sub`] before it signs anything or calls Vault. A glob has the meaning of Vault's
//! `bound_claims_type = "glob"`: `*` matches any run of characters, `:` included.

use super::auth::Caller;
use super::error::ApiError;
use crate::config::glob_match;

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

#[cfg(test)]
mod tests {
    use super::*;

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
