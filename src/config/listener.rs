//! One listener's section (`discovery` or `api`): its address, TLS files, allow list and limits,
//! and the rules between them. The section's other keys (`discovery.jwks_max_age`,
//! `api.tokens_file`, `api.max_body`) are not about the socket and are read in `mod.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::Problem;
use super::forms::{is_loopback, parse_cidr};
use super::raw::Raw;
use super::schema::{Key, ListenerKey, Section};

/// TLS files of one listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by this CA.
    pub client_ca: Option<PathBuf>,
}

/// One listening socket and how it is protected.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// Peers allowed to connect; empty means any peer that can reach the address.
    pub allow: Vec<IpNet>,
    pub insecure_http: bool,
    /// Connections served at once; `None`: half of the process's file descriptors, at most 16384.
    pub max_connections: Option<usize>,
}

/// The listener of `section`, with `default` as its address when `listen` is unset.
pub(super) fn listener(
    raw: &Raw,
    section: Section,
    default: &str,
    problems: &mut Vec<Problem>,
) -> Option<ListenerConfig> {
    let key = |name: ListenerKey| Key::Listener(section, name);
    let text = raw.str(key(ListenerKey::Listen)).unwrap_or(default);
    let listen = match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(Problem::at(
                key(ListenerKey::Listen),
                format!("{text:?} is not an address:port such as 127.0.0.1:8443"),
            ));
            None
        }
    };
    let tls = tls_files(raw, section, problems);
    let allow = raw
        .list(key(ListenerKey::Allow))
        .unwrap_or_default()
        .iter()
        .filter_map(|item| {
            parse_cidr(item)
                .map_err(|e| problems.push(Problem::at(key(ListenerKey::Allow), e)))
                .ok()
        })
        .collect();
    let insecure_http = raw.bool(key(ListenerKey::InsecureHttp)).unwrap_or(false);
    let max_connections = raw.int(key(ListenerKey::MaxConnections));
    if max_connections.is_some_and(|n| !(1..=1_000_000).contains(&n)) {
        problems.push(Problem::at(
            key(ListenerKey::MaxConnections),
            "must be between 1 and 1000000",
        ));
    }
    let listen = listen?;
    if tls.is_none() && !is_loopback(listen.ip()) && !insecure_http {
        problems.push(Problem::at(
            key(ListenerKey::Listen),
            format!(
                "{listen} is not a loopback address and the listener has no TLS: set {0}.tls_cert and {0}.tls_key, or {0}.insecure_http = true if the network is trusted",
                section
            ),
        ));
    }
    Some(ListenerConfig {
        listen,
        tls,
        allow,
        insecure_http,
        max_connections: max_connections.map(|n| n as usize),
    })
}

fn tls_files(raw: &Raw, section: Section, problems: &mut Vec<Problem>) -> Option<TlsFiles> {
    let key = |name: ListenerKey| Key::Listener(section, name);
    let path = |name: ListenerKey| raw.str(key(name)).map(PathBuf::from);
    let cert = path(ListenerKey::TlsCert);
    let tls_key = path(ListenerKey::TlsKey);
    let client_ca = path(ListenerKey::ClientCa);
    for (name, path) in [
        (ListenerKey::TlsCert, &cert),
        (ListenerKey::TlsKey, &tls_key),
        (ListenerKey::ClientCa, &client_ca),
    ] {
        if let Some(path) = path
            && let Err(e) = std::fs::metadata(path)
        {
            problems.push(Problem::at(
                key(name),
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    }
    match (cert, tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca,
        }),
        (None, None) => {
            if client_ca.is_some() {
                problems.push(Problem::at(
                    key(ListenerKey::ClientCa),
                    "needs tls_cert and tls_key: client certificates are a TLS feature",
                ));
            }
            None
        }
        (Some(_), None) => {
            problems.push(Problem::at(
                key(ListenerKey::TlsKey),
                "is required when tls_cert is set",
            ));
            None
        }
        (None, Some(_)) => {
            problems.push(Problem::at(
                key(ListenerKey::TlsCert),
                "is required when tls_key is set",
            ));
            None
        }
    }
}
