//! The issuer: `iss` of every token and `issuer` of the discovery document.

use std::fmt;
use std::net::Ipv6Addr;
use std::ops::Deref;
use std::str::FromStr;

/// Why a text is not an issuer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    /// Neither `https://` nor `http://`.
    #[error("{0:?} must start with https:// (or http:// on loopback)")]
    Scheme(String),
    /// Nothing after the scheme.
    #[error("{0:?} has no host")]
    NoHost(String),
    /// A path, query, fragment, user info or whitespace after the scheme.
    #[error(
        "{text:?} must be scheme + host [+ port] only: no path, query, fragment, user or trailing slash (found {found:?})"
    )]
    NotOrigin { text: String, found: char },
    /// Verifiers compare byte for byte, so `HTTPS://TFE` and `https://tfe` differ for them.
    #[error("{0:?} must be lowercase: verifiers compare the issuer byte for byte")]
    Uppercase(String),
    /// A colon without a host before it, an unbracketed IPv6 address or a bracketed non-address.
    #[error(
        "{0:?} has no host before its port (an IPv6 address goes in brackets: https://[::1]:8443)"
    )]
    Host(String),
    /// A port that is not a number from 1 to 65535.
    #[error("{text:?} has port {port:?}: a port is a number from 1 to 65535")]
    Port { text: String, port: String },
    /// `http://` where the rules want `https://`.
    #[error(
        "http:// is allowed only when the discovery listener is on loopback (or discovery.insecure_http = true); use https://"
    )]
    PlainHttp,
}

/// An issuer URL: `https://` (or `http://` where the configuration allows it), a host and an
/// optional port, nothing else, in lower case. Verifiers compare it byte for byte with `iss`, so
/// it is kept exactly as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Issuer(String);

impl Issuer {
    /// Checks the form of `text`; both `https://` and `http://` pass.
    pub fn parse(text: &str) -> Result<Issuer, IssuerError> {
        let rest = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"))
            .ok_or_else(|| IssuerError::Scheme(text.to_owned()))?;
        if rest.is_empty() {
            return Err(IssuerError::NoHost(text.to_owned()));
        }
        if let Some(found) = rest
            .chars()
            .find(|c| matches!(c, '/' | '?' | '#' | '@') || c.is_whitespace() || c.is_control())
        {
            return Err(IssuerError::NotOrigin {
                text: text.to_owned(),
                found,
            });
        }
        if rest.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(IssuerError::Uppercase(text.to_owned()));
        }
        check_authority(text, rest)?;
        Ok(Issuer(text.to_owned()))
    }

    /// Like [`Issuer::parse`], and refuses `http://` unless `http_allowed`: the discovery listener
    /// is on loopback or `discovery.insecure_http` is set.
    pub fn parse_for(text: &str, http_allowed: bool) -> Result<Issuer, IssuerError> {
        let issuer = Issuer::parse(text)?;
        if issuer.is_https() || http_allowed {
            Ok(issuer)
        } else {
            Err(IssuerError::PlainHttp)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
}

/// `host[:port]` or `[v6]:port`: a host, and a port from 1 to 65535 when there is a colon.
fn check_authority(text: &str, authority: &str) -> Result<(), IssuerError> {
    let host_error = || IssuerError::Host(text.to_owned());
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (v6, after) = bracketed.split_once(']').ok_or_else(host_error)?;
            v6.parse::<Ipv6Addr>().map_err(|_| host_error())?;
            match after {
                "" => (v6, None),
                _ => (v6, Some(after.strip_prefix(':').ok_or_else(host_error)?)),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(host_error());
    }
    if let Some(port) = port
        && !(port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return Err(IssuerError::Port {
            text: text.to_owned(),
            port: port.to_owned(),
        });
    }
    Ok(())
}

/// Checks the issuer form: scheme + host [+ port], nothing else; returns whether it is https.
/// [`Issuer::parse`] does the same and keeps the result.
pub fn check_issuer(text: &str) -> Result<bool, IssuerError> {
    Issuer::parse(text).map(|issuer| issuer.is_https())
}

impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Issuer {
    type Err = IssuerError;

    fn from_str(text: &str) -> Result<Issuer, IssuerError> {
        Issuer::parse(text)
    }
}

/// Read-only access to the text, which is what every use of an issuer needs.
impl Deref for Issuer {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Issuer {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Issuer> for String {
    fn from(issuer: Issuer) -> String {
        issuer.0
    }
}

impl PartialEq<str> for Issuer {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Issuer {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Issuer {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_scheme_host_and_port() {
        for (text, https) in [
            ("https://tfe.example.com", true),
            ("https://tfe.example.com:8443", true),
            ("http://127.0.0.1:8443", false),
            ("http://[::1]:8443", false),
            ("https://[fd00::7]", true),
            ("https://tfe", true),
        ] {
            let issuer = Issuer::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(issuer.as_str(), text);
            assert_eq!(issuer.to_string(), text);
            assert_eq!(issuer.is_https(), https, "{text}");
            assert_eq!(check_issuer(text), Ok(https));
        }
    }

    fn variant(error: &IssuerError) -> &'static str {
        match error {
            IssuerError::Scheme(_) => "Scheme",
            IssuerError::NoHost(_) => "NoHost",
            IssuerError::NotOrigin { .. } => "NotOrigin",
            IssuerError::Uppercase(_) => "Uppercase",
            IssuerError::Host(_) => "Host",
            IssuerError::Port { .. } => "Port",
            IssuerError::PlainHttp => "PlainHttp",
        }
    }

    #[test]
    fn refuses_everything_but_an_origin() {
        for (text, expected) in [
            ("tfe.example.com", "Scheme"),
            ("ftp://x", "Scheme"),
            ("HTTPS://x", "Scheme"),
            ("", "Scheme"),
            ("https://", "NoHost"),
            ("https://tfe.example.com/", "NotOrigin"),
            ("https://x/path", "NotOrigin"),
            ("https://a?b", "NotOrigin"),
            ("https://a#b", "NotOrigin"),
            ("https://u@h", "NotOrigin"),
            ("https://a b", "NotOrigin"),
            ("https://a\n", "NotOrigin"),
            ("https://X.com", "Uppercase"),
            ("https://:8443", "Host"),
            ("https://::1", "Host"),
            ("https://[::1", "Host"),
            ("https://[tfe]:1", "Host"),
            ("https://[::1]8443", "Host"),
            ("https://tfe:", "Port"),
            ("https://tfe:0", "Port"),
            ("https://tfe:65536", "Port"),
            ("https://tfe:+443", "Port"),
            ("https://tfe:https", "Port"),
            ("https://tfe:1:2", "Port"),
        ] {
            let error = Issuer::parse(text).expect_err(text);
            assert_eq!(variant(&error), expected, "{text}: {error}");
            assert!(check_issuer(text).is_err(), "{text}");
        }
        for (text, found) in [
            ("https://tfe.example.com/", '/'),
            ("https://a?b", '?'),
            ("https://a#b", '#'),
            ("https://u@h", '@'),
            ("https://a b", ' '),
        ] {
            assert!(
                matches!(Issuer::parse(text), Err(IssuerError::NotOrigin { found: f, .. }) if f == found),
                "{text}"
            );
        }
    }

    #[test]
    fn messages_name_the_text_and_the_fix() {
        let message = |text: &str| Issuer::parse(text).unwrap_err().to_string();
        assert_eq!(
            message("https://tfe.example.com/"),
            "\"https://tfe.example.com/\" must be scheme + host [+ port] only: no path, query, fragment, user or trailing slash (found '/')"
        );
        assert_eq!(
            message("ftp://x"),
            "\"ftp://x\" must start with https:// (or http:// on loopback)"
        );
        assert_eq!(message("https://"), "\"https://\" has no host");
        assert_eq!(
            message("https://X.com"),
            "\"https://X.com\" must be lowercase: verifiers compare the issuer byte for byte"
        );
    }

    #[test]
    fn plain_http_only_where_allowed() {
        assert_eq!(
            Issuer::parse_for("http://tfe.example.com", false),
            Err(IssuerError::PlainHttp)
        );
        assert!(Issuer::parse_for("http://tfe.example.com", true).is_ok());
        assert!(Issuer::parse_for("https://tfe.example.com", false).is_ok());
        assert!(matches!(
            Issuer::parse_for("https://tfe.example.com/", true),
            Err(IssuerError::NotOrigin { .. })
        ));
    }
}
