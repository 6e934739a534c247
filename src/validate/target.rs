//! The issuer URL: its form (the `issuer_url` check) and the origin it names.
//!
//! A form problem that still names an origin (a trailing slash, a path, capitals) fails the
//! check but lets the network checks run, so that the report can also show what the server
//! says its issuer is. A URL that names no origin stops everything.

use std::net::IpAddr;

use crate::config::is_loopback;
use crate::discovery::CONFIGURATION_PATH;

use super::report::Check;

pub const NAME: &str = "issuer_url";

/// Where the discovery listener is, as the issuer URL names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// The host without brackets: a DNS name or an IP address.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written (brackets kept): the `Host` header.
    pub authority: String,
    /// The issuer with at most one trailing `/` removed, as Vault builds the discovery URL.
    pub base: String,
}

impl Target {
    /// `scheme://authority`, lowercase scheme.
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }

    /// What Vault fetches: `<issuer without trailing slash>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}{CONFIGURATION_PATH}", self.base)
    }

    /// The request path of `discovery_url`: the issuer's path (if any) and the well-known path.
    pub fn discovery_path(&self) -> String {
        let start = self.base.find("://").map_or(0, |i| i + 3) + self.authority.len();
        format!("{}{CONFIGURATION_PATH}", &self.base[start..])
    }

    /// The path (and query) of `url` when it is on this origin.
    pub fn path_on_origin<'u>(&self, url: &'u str) -> Option<&'u str> {
        let rest = url.strip_prefix(&self.origin())?;
        rest.starts_with('/').then_some(rest)
    }

    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Checks `issuer`; returns the check and, when the URL names an origin, the target.
pub fn check(issuer: &str) -> (Check, Option<Target>) {
    match parse(issuer) {
        Err((detail, fix)) => (Check::fail(NAME, detail, fix), None),
        Ok(target) => (form(issuer, &target), Some(target)),
    }
}

type Problem = (String, String);

fn parse(issuer: &str) -> Result<Target, Problem> {
    let lower = issuer.to_ascii_lowercase();
    let (https, rest) = if lower.starts_with("https://") {
        (true, &issuer[8..])
    } else if lower.starts_with("http://") {
        (false, &issuer[7..])
    } else {
        return Err((
            format!("{issuer:?} does not start with https://"),
            "write the issuer as tfe-oidc's `issuer` setting, e.g. https://tfe-oidc.internal:8443"
                .into(),
        ));
    };
    if let Some(c) = issuer
        .chars()
        .find(|c| matches!(c, '?' | '#' | '@') || c.is_whitespace() || c.is_control())
    {
        return Err((
            format!("{issuer:?} contains {c:?}: an issuer has no user, query or fragment"),
            "use scheme + host [+ port] only, exactly as tfe-oidc's `issuer` setting".into(),
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = split_authority(authority, https)?;
    Ok(Target {
        https,
        host,
        port,
        authority: authority.to_ascii_lowercase(),
        base: issuer.strip_suffix('/').unwrap_or(issuer).to_owned(),
    })
}

fn split_authority(authority: &str, https: bool) -> Result<(String, u16), Problem> {
    let no_host = || {
        (
            format!("{authority:?} names no host"),
            "write the issuer as https://<host>[:<port>]".to_string(),
        )
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(no_host)?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(no_host());
    }
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(text) => text.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            (
                format!("{text:?} is not a port"),
                "write the port as a number from 1 to 65535".to_string(),
            )
        })?,
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// The form rules of tfe-oidc's `issuer`, with the fix for each.
fn form(issuer: &str, target: &Target) -> Check {
    let path = &issuer[issuer.find("://").map_or(0, |i| i + 3) + target.authority.len()..];
    if path == "/" {
        return Check::fail(
            NAME,
            format!("{issuer} ends with a slash"),
            format!(
                "tfe-oidc's issuer never does and Vault compares issuers byte for byte; use {}",
                target.base
            ),
        );
    }
    if !path.is_empty() {
        return Check::fail(
            NAME,
            format!("{issuer} has a path ({path})"),
            format!(
                "tfe-oidc's issuer is scheme + host [+ port]; use {}",
                target.origin()
            ),
        );
    }
    if issuer.chars().any(|c| c.is_ascii_uppercase()) {
        return Check::fail(
            NAME,
            format!("{issuer} has capital letters"),
            format!(
                "tfe-oidc's issuer is lowercase and Vault compares issuers byte for byte; use {}",
                issuer.to_ascii_lowercase()
            ),
        );
    }
    let detail = format!("{issuer}: scheme, host and port only");
    if !target.https && !target.ip().is_some_and(is_loopback) {
        return Check::warn(
            NAME,
            format!("{issuer} is plain http off loopback"),
            "anyone on the path can swap the keys Vault trusts; serve discovery over TLS (https)",
        );
    }
    Check::pass(NAME, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_port_and_discovery_url() {
        let (first, target) = check("https://tfe-oidc.internal:8443");
        assert!(first.ok, "{first:?}");
        let target = target.unwrap();
        assert_eq!(
            (target.host.as_str(), target.port),
            ("tfe-oidc.internal", 8443)
        );
        assert_eq!(
            target.discovery_url(),
            "https://tfe-oidc.internal:8443/.well-known/openid-configuration"
        );
        let (_, v6) = check("https://[::1]:9");
        assert_eq!(v6.unwrap().host, "::1");
        assert_eq!(check("https://x.example").1.unwrap().port, 443);
    }

    #[test]
    fn form_problems_keep_the_origin_and_say_the_fix() {
        let (c, target) = check("https://tfe.example.com/");
        assert!(!c.ok);
        assert!(c.fix.unwrap().contains("use https://tfe.example.com"));
        assert_eq!(
            target.unwrap().discovery_url(),
            "https://tfe.example.com/.well-known/openid-configuration"
        );
        for bad in ["https://x/tenant", "https://X.example"] {
            let (c, target) = check(bad);
            assert!(!c.ok && target.is_some(), "{bad}: {c:?}");
        }
    }

    #[test]
    fn unusable_urls_name_no_target() {
        for bad in [
            "tfe.example.com",
            "https://",
            "https://x?y",
            "https://x:0",
            "https://u@x",
        ] {
            let (c, target) = check(bad);
            assert!(!c.ok && target.is_none(), "{bad}: {c:?}");
        }
    }

    #[test]
    fn plain_http_is_a_warning_off_loopback_only() {
        assert!(check("http://127.0.0.1:8443").0.fix.is_none());
        let (c, _) = check("http://10.0.0.1:8443");
        assert!(c.ok && c.fix.is_some());
    }
}
