//! Vault's glob matching (`bound_claims_type = "glob"`, and the audiences of a token policy): `*`
//! matches any run of characters, `:` included, and nothing else is special.

/// A glob where `*` matches any run of characters (including none) and nothing else is special.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_vault() {
        assert!(glob_match("a*c", "abc"));
        assert!(glob_match("a*c", "ac"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*c", "ab"));
        assert!(glob_match(
            "//iam.googleapis.com/*",
            "//iam.googleapis.com/projects/1"
        ));
        assert!(!glob_match(
            "vault.workload.identity",
            "vault.workload.identityX"
        ));
        assert!(!glob_match("a*a", "a"));
    }
}
