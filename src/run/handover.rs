//! The caller's API credential, handed over by the runner without leaving it where COMMAND could
//! read it later.
//!
//! `--api-token-file` names a file, `-` (standard input) or an inherited descriptor
//! (`/dev/fd/N`, `/proc/self/fd/N`, `/dev/stdin`). A descriptor is read to its end and then closed
//! before anything else happens; standard input is replaced by `/dev/null`, which COMMAND then
//! inherits. The file's whole content, trimmed, is the bearer token: a static API token or an
//! upstream OIDC token (a JWT), never assumed to have a particular prefix.
//!
//! `run` also makes itself non-dumpable, so that a process of the same user (COMMAND included)
//! cannot read its memory, environment or descriptors through `/proc/<pid>` or attach to it.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::RawFd;
use std::path::Path;

use super::RunError;

/// The largest credential accepted: a static API token is about 50 bytes, an upstream OIDC token
/// a few KiB.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// An API bearer token. Its `Debug` never shows it.
pub struct ApiToken(String);

impl ApiToken {
    /// Reads the credential `path` names (see the module's documentation).
    pub fn read(path: &Path) -> Result<ApiToken, RunError> {
        let usage =
            |why: String| RunError::Usage(format!("--api-token-file {}: {why}", path.display()));
        let bytes = match descriptor(path) {
            Some(fd) => take_descriptor(fd),
            None => read_file(path),
        }
        .map_err(|e| usage(e.to_string()))?;
        ApiToken::parse(&bytes).map_err(|why| usage(why.to_owned()))
    }

    #[cfg(test)]
    pub(super) fn for_tests(token: &str) -> ApiToken {
        ApiToken(token.to_owned())
    }

    /// The bearer token itself, for the `Authorization` header only.
    pub(super) fn secret(&self) -> &str {
        &self.0
    }

    fn parse(bytes: &[u8]) -> Result<ApiToken, &'static str> {
        if bytes.len() > MAX_TOKEN_BYTES {
            return Err("is larger than 16 KiB: it must hold one API token or one OIDC token");
        }
        let token = std::str::from_utf8(bytes)
            .map_err(|_| "is not text: it must hold one API token or one OIDC token")?
            .trim();
        if token.is_empty() {
            return Err("holds no token: write the API token or the upstream OIDC token into it");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "holds more than one word, or characters no bearer token has (spaces, control or non-ASCII characters): write one token alone",
            );
        }
        Ok(ApiToken(token.to_owned()))
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Makes `run` non-dumpable (`PR_SET_DUMPABLE` 0): its `/proc/<pid>` entries become root's, no
/// process of the same user may attach to it, and it leaves no core dump holding the credential.
/// COMMAND is dumpable again after its `execve`.
pub fn harden() {
    use rustix::process::{DumpableBehavior, set_dumpable_behavior};
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "cannot make run non-dumpable; COMMAND may read its memory");
    }
}

/// The inherited descriptor `path` names, if it names one.
fn descriptor(path: &Path) -> Option<RawFd> {
    let text = path.to_str()?;
    if text == "-" || text == "/dev/stdin" {
        return Some(0);
    }
    let number = text
        .strip_prefix("/dev/fd/")
        .or_else(|| text.strip_prefix("/proc/self/fd/"))?;
    number.parse().ok()
}

fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_TOKEN_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads `fd` to its end (or just past the size bound), then closes it: standard input becomes
/// `/dev/null`, any other descriptor is closed.
fn take_descriptor(fd: RawFd) -> io::Result<Vec<u8>> {
    if fd == 1 || fd == 2 {
        return Err(io::Error::other(
            "is run's own standard output or error: pass the token on standard input (-) or on a descriptor from 3 up",
        ));
    }
    let bytes = read_descriptor(fd);
    let closed = if fd == 0 {
        std::fs::File::open("/dev/null").and_then(|null| {
            use std::os::fd::AsRawFd;
            nix::unistd::dup2(null.as_raw_fd(), 0)
                .map(drop)
                .map_err(io::Error::from)
        })
    } else {
        nix::unistd::close(fd).map_err(io::Error::from)
    };
    let bytes = bytes?;
    closed.map_err(|e| io::Error::other(format!("read, but cannot be closed: {e}")))?;
    Ok(bytes)
}

fn read_descriptor(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    while bytes.len() <= MAX_TOKEN_BYTES {
        match nix::unistd::read(fd, &mut buffer) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_trimmed_content_is_the_token_and_it_is_hidden() {
        let token = ApiToken::parse(b"\n  tfeoidc_abc  \n").unwrap();
        assert_eq!(token.secret(), "tfeoidc_abc");
        assert_eq!(format!("{token:?}"), "<redacted>");
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        assert_eq!(ApiToken::parse(jwt.as_bytes()).unwrap().secret(), jwt);
    }

    #[test]
    fn empty_oversized_and_multi_word_files_are_refused() {
        assert!(
            ApiToken::parse(b" \n")
                .unwrap_err()
                .contains("holds no token")
        );
        let big = vec![b'a'; MAX_TOKEN_BYTES + 1];
        assert!(
            ApiToken::parse(&big)
                .unwrap_err()
                .contains("larger than 16 KiB")
        );
        assert!(ApiToken::parse(&big[..MAX_TOKEN_BYTES]).is_ok());
        assert!(
            ApiToken::parse(b"a\nb")
                .unwrap_err()
                .contains("one token alone")
        );
        assert!(ApiToken::parse(b"\xff").unwrap_err().contains("not text"));
    }

    #[test]
    fn descriptors_are_recognised() {
        assert_eq!(descriptor(Path::new("-")), Some(0));
        assert_eq!(descriptor(Path::new("/dev/stdin")), Some(0));
        assert_eq!(descriptor(Path::new("/dev/fd/3")), Some(3));
        assert_eq!(descriptor(Path::new("/proc/self/fd/63")), Some(63));
        assert_eq!(descriptor(Path::new("/dev/fd/x")), None);
        assert_eq!(descriptor(Path::new("/etc/tfe-oidc/token")), None);
        let e = take_descriptor(2).unwrap_err().to_string();
        assert!(e.contains("standard output or error"), "{e}");
    }
}
