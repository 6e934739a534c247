//! The input rules every token kind shares, so that no claim can be forged through another.
//!
//! Names cannot hold `:` (it separates the parts of `sub`), `*` (Vault's glob wildcard, which
//! also matches `:`), control characters or any non-ASCII character (a look-alike letter would
//! let one name pass for another in a Vault role). IDs carry their prefix. Every kind's context
//! (`claims.rs`, `module_test.rs`, `stack.rs`) is built through these functions and nothing else.

/// One input that is not acceptable, named by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

const MAX_NAME: usize = 90;

/// An organization, workspace, module, stack or deployment name: ASCII letters, digits, `-`
/// and `_`, 1 to 90 characters.
pub fn simple_name(field: &str, text: &str) -> Result<String, FieldError> {
    check_length(field, text)?;
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(FieldError::new(
            field,
            format!(
                "{} is not allowed: use letters, digits, '-' and '_' (1 to {MAX_NAME} characters)",
                describe(c)
            ),
        ));
    }
    Ok(text.to_owned())
}

/// A project name: as `simple_name`, and single spaces between other characters.
pub fn project_name(field: &str, text: &str) -> Result<String, FieldError> {
    check_length(field, text)?;
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ' ')))
    {
        return Err(FieldError::new(
            field,
            format!(
                "{} is not allowed: use letters, digits, '-', '_' and single inner spaces (1 to {MAX_NAME} characters)",
                describe(c)
            ),
        ));
    }
    if text.starts_with(' ') || text.ends_with(' ') || text.contains("  ") {
        return Err(FieldError::new(
            field,
            "spaces are allowed only singly and between other characters",
        ));
    }
    Ok(text.to_owned())
}

/// An ID: `prefix` then 1 to 64 ASCII letters or digits.
pub fn prefixed_id(field: &str, text: &str, prefix: &str) -> Result<String, FieldError> {
    let rest = text.strip_prefix(prefix).unwrap_or("");
    let ok = (1..=64).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ok {
        return Err(FieldError::new(
            field,
            format!(
                "{:?} is not an ID: use {prefix} followed by 1 to 64 letters or digits",
                truncate(text)
            ),
        ));
    }
    Ok(text.to_owned())
}

fn check_length(field: &str, text: &str) -> Result<(), FieldError> {
    if text.is_empty() || text.chars().count() > MAX_NAME {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {MAX_NAME} characters long"),
        ));
    }
    Ok(())
}

fn describe(c: char) -> String {
    match c {
        ':' => "':' (it separates the parts of sub)".into(),
        '*' => "'*' (Vault's glob wildcard)".into(),
        c if c.is_control() => format!("the control character U+{:04X}", c as u32),
        c => format!("{c:?}"),
    }
}

/// At most 64 characters of untrusted text, for messages.
pub fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_separators_wildcards_controls_and_look_alikes() {
        for bad in [
            "a:b",
            "a*",
            "a\u{7}b",
            "\u{430}cme",
            "a b",
            "",
            &"x".repeat(91),
        ] {
            assert_eq!(simple_name("f", bad).unwrap_err().field, "f", "{bad:?}");
        }
        for bad in [" a", "a ", "a  b", "a:b", "\u{430}"] {
            assert!(project_name("p", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            project_name("p", "Default Project").unwrap(),
            "Default Project"
        );
    }

    #[test]
    fn ids_need_their_prefix_and_a_short_alphanumeric_rest() {
        assert!(prefixed_id("i", "st-abc123", "st-").is_ok());
        for bad in [
            "st-",
            "sp-abc",
            "st-a:b",
            "st-a*",
            &format!("st-{}", "a".repeat(65)),
        ] {
            assert!(prefixed_id("i", bad, "st-").is_err(), "{bad:?}");
        }
    }
}
