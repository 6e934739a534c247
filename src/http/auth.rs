//! Bearer authentication of the API listener (docs/reference.md §4).
//!
//! The tokens file holds lines `sha256:<hex> <name> [scope,...] [sub=GLOB,...]`; bearer tokens
//! are never stored in clear. `sub=` binds the caller to the `sub` values it may obtain
//! (`policy.rs`); it runs to the end of the line, so a glob may hold a project name's spaces. A
//! presented token is hashed and compared in constant time against every digest. With no tokens
//! file, `<keys.dir>/api-token` (mode 0600) holds a development token.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use subtle::ConstantTimeEq;

use super::policy::{GlobError, SubPolicy, check_glob};
use crate::discovery::hex;
use crate::keys::store::{Access, KeyDir};

/// What a caller may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `/v1/tokens`
    Tokens,
    /// `/v1/credentials*`
    Credentials,
    /// `/v1/keys*`
    Keys,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Tokens, Scope::Credentials, Scope::Keys];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Tokens => "tokens",
            Scope::Credentials => "credentials",
            Scope::Keys => "keys",
        }
    }

    fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One authorised caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// The `sub` values it may obtain.
    pub subs: SubPolicy,
}

impl Caller {
    /// Whether this caller may sign (scope `tokens` or `credentials`) for any `sub`.
    pub fn signs_any_sub(&self) -> bool {
        !self.subs.is_bound()
            && self
                .scopes
                .iter()
                .any(|s| matches!(s, Scope::Tokens | Scope::Credentials))
    }
}

struct Entry {
    digest: [u8; 32],
    caller: Caller,
}

/// The digests of every accepted bearer token. `Debug` shows only the callers' names.
pub struct ApiTokens {
    entries: Vec<Entry>,
}

impl fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.caller.name))
            .finish()
    }
}

/// A bearer token in clear; its `Debug` is redacted.
pub struct BearerToken(pub String);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// What is wrong with a tokens file. Messages name the file and line, never a digest.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// A line is not `sha256:<hex> <name> [scope,...]`.
    #[error("line {number}: {why}")]
    Line { number: usize, why: LineError },
    /// No line names a token.
    #[error("no tokens: add a line made by `tfe-oidc api-token new`")]
    Empty,
    /// Not a regular file (a FIFO would block the reload that opens it).
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    /// Someone else could add a token: the file is writable by group or others, or owned by
    /// another user.
    #[error("{path} could be changed by another user: {fix}")]
    Insecure { path: PathBuf, fix: String },
    /// Any of the above, in the file at `path`.
    #[error("{path}: {source}")]
    In {
        path: PathBuf,
        source: Box<TokensFileError>,
    },
}

/// What is wrong with one line of a tokens file.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("must start with sha256:<64 hex digits>")]
    NoDigest,
    #[error("the digest must be 64 hex digits")]
    BadDigest,
    #[error("a caller name must follow the digest")]
    NoName,
    #[error("unknown scope {0:?}: use tokens, credentials or keys")]
    UnknownScope(String),
    #[error("too many fields: expected `sha256:<hex> <name> [scope,...] [sub=GLOB,...]`")]
    TooManyFields,
    #[error("sub=: {0}")]
    Sub(#[from] GlobError),
    /// The same token on two lines: which line's scopes and binding apply would be a guess.
    #[error("the same token's digest is on line {0} already: remove one of the two lines")]
    DuplicateDigest(usize),
}

impl ApiTokens {
    /// Parses a tokens file's text; errors name the line.
    pub fn parse(text: &str) -> Result<ApiTokens, TokensFileError> {
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |why| TokensFileError::Line {
                number: number + 1,
                why,
            };
            let entry = parse_line(line).map_err(at)?;
            if let Some((first, _)) = entries
                .iter()
                .find(|(_, e): &&(usize, Entry)| e.digest == entry.digest)
            {
                return Err(at(LineError::DuplicateDigest(*first)));
            }
            entries.push((number + 1, entry));
        }
        if entries.is_empty() {
            return Err(TokensFileError::Empty);
        }
        let entries = entries.into_iter().map(|(_, e)| e).collect();
        Ok(ApiTokens { entries })
    }

    pub fn load(path: &Path) -> Result<ApiTokens, TokensFileError> {
        let read = |source| TokensFileError::Read {
            path: path.to_owned(),
            source,
        };
        check_tokens_file(path, &std::fs::metadata(path).map_err(read)?)?;
        let text = std::fs::read_to_string(path).map_err(read)?;
        ApiTokens::parse(&text).map_err(|e| TokensFileError::In {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// The caller whose token this is, comparing against every digest in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<&Caller> {
        let digest = sha256(presented.as_bytes());
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(&entry.caller);
            }
        }
        found
    }

    /// The callers that may sign for any `sub`: lines without `sub=` that hold the `tokens` or
    /// `credentials` scope.
    pub fn unbound_signers(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| e.caller.signs_any_sub())
            .map(|e| e.caller.name.as_str())
            .collect()
    }
}

/// A tokens file decides who may mint tokens: like OpenSSH's StrictModes, refuse one that
/// another user could write. Root, or the user tfe-oidc runs as, may own it: root can change
/// anything anyway, and `root:tfe-oidc 0640` (or a Kubernetes Secret's `root:<fsGroup> 0440`) is
/// the layout that keeps a compromised service from rewriting its own secrets.
fn check_tokens_file(path: &Path, meta: &std::fs::Metadata) -> Result<(), TokensFileError> {
    use std::os::unix::fs::MetadataExt;
    if !meta.is_file() {
        return Err(TokensFileError::NotAFile {
            path: path.to_owned(),
        });
    }
    let euid = rustix::process::geteuid().as_raw();
    let fix = if meta.uid() != euid && meta.uid() != 0 {
        format!(
            "it is owned by uid {}: run `chown root {}` (and `chgrp` it to the service's group, mode 0640)",
            meta.uid(),
            path.display()
        )
    } else if meta.mode() & 0o022 != 0 {
        format!("run `chmod go-w {}`", path.display())
    } else {
        return Ok(());
    };
    Err(TokensFileError::Insecure {
        path: path.to_owned(),
        fix,
    })
}

fn parse_line(line: &str) -> Result<Entry, LineError> {
    let (line, subs) = match sub_field(line) {
        Some(at) => (&line[..at], parse_subs(&line[at + 4..])?),
        None => (line, SubPolicy::Any),
    };
    let mut fields = line.split_whitespace();
    let digest_text = fields.next().unwrap_or_default();
    let hex_text = digest_text
        .strip_prefix("sha256:")
        .ok_or(LineError::NoDigest)?;
    let digest = decode_hex32(hex_text).ok_or(LineError::BadDigest)?;
    let name = fields.next().ok_or(LineError::NoName)?.to_owned();
    let scopes = match fields.next() {
        None => Scope::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|s| Scope::parse(s).ok_or_else(|| LineError::UnknownScope(s.to_owned())))
            .collect::<Result<_, _>>()?,
    };
    if fields.next().is_some() {
        return Err(LineError::TooManyFields);
    }
    Ok(Entry {
        digest,
        caller: Caller { name, scopes, subs },
    })
}

/// Where the `sub=` field starts: the first field that begins with it.
fn sub_field(line: &str) -> Option<usize> {
    line.match_indices("sub=")
        .map(|(at, _)| at)
        .find(|&at| at > 0 && line[..at].ends_with(char::is_whitespace))
}

/// The globs of a `sub=` field: comma-separated, to the end of the line.
fn parse_subs(text: &str) -> Result<SubPolicy, GlobError> {
    let globs: Vec<String> = text.trim().split(',').map(str::to_owned).collect();
    for glob in &globs {
        check_glob(glob)?;
    }
    Ok(SubPolicy::Globs(globs))
}

fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// A fresh random bearer token (256 bits).
pub fn new_token() -> BearerToken {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random generator works");
    BearerToken(format!("tfeoidc_{}", B64.encode(bytes)))
}

/// The tokens-file line that accepts `token` for `name` with `scopes`, for any `sub`.
pub fn tokens_file_line(token: &BearerToken, name: &str, scopes: &[Scope]) -> String {
    bound_tokens_file_line(token, name, scopes, &[])
}

/// The tokens-file line that accepts `token` for `name` with `scopes`, bound to `subs` when
/// any are given; the caller has checked each with `check_glob`.
pub fn bound_tokens_file_line(
    token: &BearerToken,
    name: &str,
    scopes: &[Scope],
    subs: &[String],
) -> String {
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let mut line = format!(
        "sha256:{} {name} {}",
        hex(&sha256(token.0.as_bytes())),
        scopes.join(",")
    );
    if !subs.is_empty() {
        line.push_str(" sub=");
        line.push_str(&subs.join(","));
    }
    line
}

/// The development token: read from `<keys_dir>/api-token`, created (mode 0600) when absent.
/// `keys_dir` is created with mode 0700 when absent and checked as the key store checks it: a
/// directory or token file another user could read or change is refused, and a link is never
/// followed.
pub fn development_token(keys_dir: &Path) -> io::Result<(PathBuf, ApiTokens)> {
    const NAME: &str = "api-token";
    let dir = KeyDir::create(keys_dir).map_err(io::Error::other)?;
    let path = dir.path_of(NAME);
    let token = match dir.read(NAME, Access::Private) {
        Ok(bytes) => BearerToken(String::from_utf8_lossy(&bytes).trim().to_owned()),
        Err(e) if e.is_not_found() => {
            let token = new_token();
            dir.create_new(NAME, format!("{}\n", token.0).as_bytes())
                .map_err(io::Error::other)?;
            token
        }
        Err(e) => return Err(io::Error::other(e)),
    };
    if token.0.len() < 16 {
        return Err(io::Error::other(format!(
            "{} holds no usable token: delete it to make a new one",
            path.display()
        )));
    }
    let line = tokens_file_line(&token, "development", &Scope::ALL);
    let tokens = ApiTokens::parse(&line).map_err(io::Error::other)?;
    Ok((path, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_authenticates_through_its_line_only() {
        let token = new_token();
        let tokens = ApiTokens::parse(&tokens_file_line(&token, "tfe", &[Scope::Tokens])).unwrap();
        let caller = tokens.authenticate(&token.0).unwrap();
        assert_eq!(caller.name, "tfe");
        assert_eq!(caller.scopes, [Scope::Tokens]);
        assert!(tokens.authenticate("tfeoidc_wrong").is_none());
        assert!(!format!("{token:?}").contains(&token.0));
    }

    #[test]
    fn a_tokens_file_only_root_or_the_service_user_can_write_is_accepted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-tokens");
        std::fs::write(&path, format!("sha256:{} tfe tokens\n", "0".repeat(64))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        ApiTokens::load(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
        let err = ApiTokens::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod go-w"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        let euid = rustix::process::geteuid().as_raw();
        // Owned by neither root nor us (only root can give a file away): refused.
        if euid == 0 {
            std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
            let err = ApiTokens::load(&path).unwrap_err().to_string();
            assert!(
                err.contains("owned by uid 4242") && err.contains("chown root"),
                "{err}"
            );
            std::os::unix::fs::chown(&path, Some(0), Some(4242)).unwrap();
            ApiTokens::load(&path).unwrap();
        }
    }

    #[test]
    fn a_token_on_two_lines_is_refused() {
        let token = new_token();
        let line = tokens_file_line(&token, "tfe", &[Scope::Tokens]);
        let err = ApiTokens::parse(&format!("{line}\n# old\n{line}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("line 3:") && err.contains("line 1"),
            "{err}"
        );
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let err = ApiTokens::parse("# comment\nsha256:zz name\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("line 2:"), "{err}");
        let digest = "0".repeat(64);
        assert!(
            ApiTokens::parse(&format!("sha256:{digest} n bogus"))
                .unwrap_err()
                .to_string()
                .contains("unknown scope")
        );
        assert_eq!(
            ApiTokens::parse(&format!("sha256:{digest} n"))
                .unwrap()
                .entries[0]
                .caller
                .scopes
                .len(),
            3
        );
    }

    #[test]
    fn sub_runs_to_the_end_of_the_line_and_binds_the_caller() {
        let token = new_token();
        let subs =
            ["organization:acme:project:Default Project:workspace:prod:run_phase:*".to_owned()];
        let line = bound_tokens_file_line(&token, "ci", &[Scope::Credentials], &subs);
        let tokens = ApiTokens::parse(&line).unwrap();
        let caller = tokens.authenticate(&token.0).unwrap();
        assert_eq!(caller.subs, SubPolicy::Globs(subs.to_vec()));
        assert!(tokens.unbound_signers().is_empty());
        // Without scopes, and with two globs.
        let digest = "0".repeat(64);
        let tokens = ApiTokens::parse(&format!("sha256:{digest} ci sub=a:*,b:*")).unwrap();
        let caller = &tokens.entries[0].caller;
        assert_eq!(caller.scopes.len(), 3);
        assert_eq!(
            caller.subs,
            SubPolicy::Globs(vec!["a:*".into(), "b:*".into()])
        );
        let err = ApiTokens::parse(&format!("sha256:{digest} ci tokens sub=a,,b"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sub=: a sub glob is empty"), "{err}");
        let other = "1".repeat(64);
        let tokens = ApiTokens::parse(&format!(
            "sha256:{digest} tfe tokens\nsha256:{other} op keys"
        ))
        .unwrap();
        assert_eq!(tokens.unbound_signers(), ["tfe"]);
    }
}
