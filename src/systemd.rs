//! The service manager's readiness protocol (`sd_notify`): with `Type=notify`, systemd passes a
//! datagram socket in `NOTIFY_SOCKET`, and `systemctl start` returns once `READY=1` arrives, or
//! fails when the process exits first (a bad configuration, a busy port). Without the variable
//! (any other supervisor, a shell) nothing is sent.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (`READY=1`, `STOPPING=1`) to the service manager, if there is one. A failure is
/// logged and otherwise ignored: the service works without it.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = address(&path).and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "could not notify the service manager");
    }
}

/// `NOTIFY_SOCKET` as an address: a path, or an abstract name when it starts with `@`.
fn address(value: &std::ffi::OsStr) -> std::io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    match value.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let abstract_name = format!("tfe-oidc-test-{}", std::process::id());
        let abstract_addr = SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
        let abstract_listener = UnixDatagram::bind_addr(&abstract_addr).unwrap();
        for (value, socket) in [
            (path.into_os_string(), &listener),
            (format!("@{abstract_name}").into(), &abstract_listener),
        ] {
            let addr = address(&value).unwrap();
            UnixDatagram::unbound()
                .unwrap()
                .send_to_addr(b"READY=1", &addr)
                .unwrap();
            let mut buf = [0u8; 16];
            let n = socket.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"READY=1");
        }
    }
}
