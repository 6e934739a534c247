//! The key directory, resolved once: `KeyDir` holds a descriptor of `keys.dir` opened at start, and
//! every later file operation is relative to it (`openat`, `renameat`, `unlinkat`, `fstatat`,
//! `fsync` and `readdir` of the descriptor), so a path swapped during a run cannot redirect a
//! write. No operation follows a symbolic link inside the directory, new files are created under
//! random names with `O_CREAT|O_EXCL|O_NOFOLLOW`, and every file the store relies on is checked to
//! be a regular file that no other user can change (as OpenSSH's StrictModes does).
//!
//! It knows file names and modes, not keys: what the files hold is `super`'s business.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::StoreError;
use crate::keys::Kid;

/// Who besides the owner may use a file the store relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No one: private keys, the development API token.
    Private,
    /// Others may read it, never write it: the directory, the manifest, the lock.
    ReadOnlyToOthers,
}

impl Access {
    fn forbidden_bits(self) -> u32 {
        match self {
            Access::Private => 0o077,
            Access::ReadOnlyToOthers => 0o022,
        }
    }

    fn forbidden_text(self) -> &'static str {
        match self {
            Access::Private => "readable or writable by group or others",
            Access::ReadOnlyToOthers => "writable by group or others",
        }
    }
}

/// The opened key directory; see the module documentation.
#[derive(Debug)]
pub struct KeyDir {
    /// For messages only: nothing is looked up through it after `open`.
    path: PathBuf,
    fd: OwnedFd,
}

impl KeyDir {
    /// Creates `path` with mode 0700 (its parents as needed) unless it exists, then opens it as
    /// `open` does: an existing directory keeps its mode and is refused if it is too open.
    pub fn create(path: &Path) -> Result<KeyDir, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_at(path)(e)),
            _ => KeyDir::open(path),
        }
    }

    /// Opens `path`, resolving it (symbolic links included) this once, and checks that it is a
    /// directory of this user that no one else can use.
    pub fn open(path: &Path) -> Result<KeyDir, StoreError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(errno_at(path))?;
        let stat = rustix::fs::fstat(&fd).map_err(errno_at(path))?;
        // Others may list the directory (a fresh checkout's `keys/` is 0755; the kids it shows
        // are public), never write to it; every file with a secret is checked as private.
        check(path, &stat, FileType::Directory, Access::ReadOnlyToOthers)?;
        Ok(KeyDir {
            path: path.to_owned(),
            fd,
        })
    }

    /// Checks the opened directory again (one `fstat`): still this user's, still not writable by
    /// others.
    pub fn recheck(&self) -> Result<(), StoreError> {
        let stat = rustix::fs::fstat(&self.fd).map_err(errno_at(&self.path))?;
        check(
            &self.path,
            &stat,
            FileType::Directory,
            Access::ReadOnlyToOthers,
        )
    }

    /// The configured path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in the directory, for messages.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The contents of `name`, which must be a regular file of this user that `access` allows; a
    /// symbolic link is refused, never followed.
    pub fn read(&self, name: &str, access: Access) -> Result<Vec<u8>, StoreError> {
        let file = self.open_existing(name, OFlags::RDONLY, access)?;
        let mut bytes = Vec::new();
        (&file)
            .read_to_end(&mut bytes)
            .map_err(io_at(&self.path_of(name)))?;
        Ok(bytes)
    }

    /// Why `name` cannot be trusted as a file that `access` allows (missing, not a regular file,
    /// another owner, too open), or `None` when it can. One `fstatat`, following no link.
    pub fn trouble(&self, name: &str, access: Access) -> Option<StoreError> {
        let path = self.path_of(name);
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => check(&path, &stat, FileType::RegularFile, access).err(),
            Err(e) => Some(errno_at(&path)(e)),
        }
    }

    /// Replaces `name` crash-safely: a new file under a random name (`O_CREAT|O_EXCL|O_NOFOLLOW`,
    /// mode 0600), fsync, `renameat` over `name`, fsync of the directory. A symbolic link at `name`
    /// is replaced, never written through.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let (tmp, file) = self.create_temp(name)?;
        if let Err(e) = write_synced(&file, bytes) {
            self.discard(&tmp);
            // The file that could not be written is `name`: the temporary one is already gone.
            return Err(io_at(&self.path_of(name))(e));
        }
        if let Err(e) = rustix::fs::renameat(&self.fd, &tmp, &self.fd, name) {
            self.discard(&tmp);
            return Err(errno_at(&self.path_of(name))(e));
        }
        self.sync()
    }

    /// Creates `name` holding `bytes` (mode 0600), failing if anything, a link included, is there.
    pub fn create_new(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let file = self.create_excl(name)?;
        write_synced(&file, bytes).map_err(io_at(&self.path_of(name)))?;
        self.sync()
    }

    /// Removes the directory entry `name` (a link itself, never its target).
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
            .map_err(errno_at(&self.path_of(name)))
    }

    /// The names in the directory, read through the descriptor; names that are not UTF-8 are
    /// skipped (the store names none so).
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let dir = rustix::fs::Dir::read_from(&self.fd).map_err(errno_at(&self.path))?;
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(errno_at(&self.path))?;
            if let Ok(name) = entry.file_name().to_str()
                && name != "."
                && name != ".."
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    /// Makes the directory's entries durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        rustix::fs::fsync(&self.fd).map_err(errno_at(&self.path))
    }

    /// Opens (creating if needed) the lock file `name` and takes its exclusive lock, held for as
    /// long as the returned file lives.
    pub fn lock(&self, name: &str) -> Result<File, StoreError> {
        let path = self.path_of(name);
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| self.open_error(name, e))?;
        let stat = rustix::fs::fstat(&fd).map_err(errno_at(&path))?;
        check(
            &path,
            &stat,
            FileType::RegularFile,
            Access::ReadOnlyToOthers,
        )?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(File::from(fd)),
            Err(Errno::WOULDBLOCK) => Err(StoreError::Locked {
                dir: self.path.clone(),
            }),
            Err(e) => Err(errno_at(&path)(e)),
        }
    }

    /// Opens an existing regular file without following a link (nor blocking on a FIFO) and
    /// checks it.
    fn open_existing(&self, name: &str, mode: OFlags, access: Access) -> Result<File, StoreError> {
        let flags = mode | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::empty())
            .map_err(|e| self.open_error(name, e))?;
        let path = self.path_of(name);
        let stat = rustix::fs::fstat(&fd).map_err(errno_at(&path))?;
        check(&path, &stat, FileType::RegularFile, access)?;
        Ok(File::from(fd))
    }

    /// A new file under a fresh random temporary name for `name`.
    fn create_temp(&self, name: &str) -> Result<(String, File), StoreError> {
        let mut last = None;
        for _ in 0..8 {
            let tmp = temp_name(name);
            match self.create_excl(&tmp) {
                Ok(file) => return Ok((tmp, file)),
                Err(StoreError::Io { source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    last = Some(source);
                }
                Err(StoreError::Io { source, .. }) => {
                    return Err(io_at(&self.path_of(name))(source));
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Io {
            path: self.path_of(name),
            source: last.unwrap_or_else(|| io::Error::other("no free temporary name")),
        })
    }

    fn create_excl(&self, name: &str) -> Result<File, StoreError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o600))
            .map(File::from)
            .map_err(errno_at(&self.path_of(name)))
    }

    /// Best effort: a temporary file left behind is removed at the next start anyway.
    fn discard(&self, tmp: &str) {
        let _ = rustix::fs::unlinkat(&self.fd, tmp, AtFlags::empty());
    }

    /// `ELOOP` from an `O_NOFOLLOW` open means a symbolic link sits at `name`.
    fn open_error(&self, name: &str, e: Errno) -> StoreError {
        let path = self.path_of(name);
        if e == Errno::LOOP {
            return StoreError::NotAFile {
                path,
                found: "symbolic link",
                expected: "regular file",
            };
        }
        errno_at(&path)(e)
    }
}

/// Whether `name` is the private key file of a key: `<kid>.pem`, a kid being 43 base64url
/// characters. Only such files (and `is_own_temp` ones) are ever deleted by the store.
pub fn is_kid_pem(name: &str) -> bool {
    name.strip_suffix(".pem")
        .is_some_and(|kid| Kid::parse(kid).is_ok())
}

/// Whether `name` is a temporary file of the store: `.keys.json.<16 hex>.tmp` or
/// `.<kid>.pem.<16 hex>.tmp`, or the same without the random part (the fixed names of earlier
/// versions, which a crash may have left).
pub fn is_own_temp(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    let base = match inner.rsplit_once('.') {
        Some((base, tag)) if is_tag(tag) => base,
        _ => inner,
    };
    base == super::MANIFEST || is_kid_pem(base)
}

fn is_tag(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `.<name>.<16 random hex digits>.tmp`
fn temp_name(name: &str) -> String {
    let mut random = [0u8; 8];
    SystemRandom::new()
        .fill(&mut random)
        .expect("the system random generator works");
    format!(".{name}.{:016x}.tmp", u64::from_be_bytes(random))
}

/// Refuses what is not of type `want`, not owned by the effective user, or more open than `access`.
fn check(path: &Path, stat: &Stat, want: FileType, access: Access) -> Result<(), StoreError> {
    let found = FileType::from_raw_mode(stat.st_mode);
    if found != want {
        return Err(StoreError::NotAFile {
            path: path.to_owned(),
            found: type_name(found),
            expected: type_name(want),
        });
    }
    let (owner, euid) = (stat.st_uid, rustix::process::geteuid().as_raw());
    let shown = path.display();
    if owner != euid {
        return Err(StoreError::Insecure {
            path: path.to_owned(),
            why: format!("owned by uid {owner}, not by uid {euid} that runs tfe-oidc"),
            fix: format!("run tfe-oidc as uid {owner}, or `chown {euid} {shown}`"),
        });
    }
    let mode = stat.st_mode & 0o7777;
    if mode & access.forbidden_bits() != 0 {
        let chmod = if want == FileType::Directory {
            700
        } else {
            600
        };
        return Err(StoreError::Insecure {
            path: path.to_owned(),
            why: format!("{} (mode {mode:04o})", access.forbidden_text()),
            fix: format!("run `chmod {chmod} {shown}`"),
        });
    }
    Ok(())
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of unknown type",
    }
}

fn write_synced(mut file: &File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()
}

pub(super) fn io_at(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn errno_at(path: &Path) -> impl Fn(Errno) -> StoreError + '_ {
    move |e| io_at(path)(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    const KID: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

    fn private_dir() -> (tempfile::TempDir, KeyDir) {
        let parent = tempfile::tempdir().unwrap();
        let dir = KeyDir::create(&parent.path().join("keys")).unwrap();
        (parent, dir)
    }

    #[test]
    fn a_failed_write_names_the_file_being_replaced_not_its_temporary_name() {
        let (_parent, dir) = private_dir();
        // Short enough to exist, too long once `.<name>.<16 hex>.tmp` is made of it.
        let name = "k".repeat(240);
        let err = dir.write_atomic(&name, b"x").unwrap_err().to_string();
        assert!(err.contains(&name), "{err}");
        assert!(
            !err.contains(&format!(".{name}.")),
            "names the temporary file: {err}"
        );
        assert!(dir.names().unwrap().is_empty(), "nothing is left behind");
    }

    #[test]
    fn only_kid_named_pems_and_the_stores_own_temporary_names_are_its_files() {
        assert!(is_kid_pem(&format!("{KID}.pem")));
        for own in [
            format!(".keys.json.{}.tmp", "0123456789abcdef"),
            ".keys.json.tmp".to_owned(),
            format!(".{KID}.pem.{}.tmp", "fedcba9876543210"),
            format!(".{KID}.pem.tmp"),
            temp_name("keys.json"),
            temp_name(&format!("{KID}.pem")),
        ] {
            assert!(is_own_temp(&own), "{own}");
        }
        for foreign in [
            "tls.key",
            "discovery.pem",
            "README",
            "short.pem",
            ".tls.key.tmp",
            ".keys.json.XYZ.tmp",
            ".discovery.pem.0123456789abcdef.tmp",
            "keys.json.tmp",
            "api-token",
            ".lock",
        ] {
            assert!(!is_kid_pem(foreign), "{foreign}");
            assert!(!is_own_temp(foreign), "{foreign}");
        }
    }

    #[test]
    fn write_atomic_replaces_a_planted_symlink_and_leaves_its_target_alone() {
        let (parent, dir) = private_dir();
        let outside = parent.path().join("outside");
        fs::write(&outside, b"precious").unwrap();
        symlink(&outside, dir.path_of("keys.json")).unwrap();
        let err = dir.read("keys.json", Access::ReadOnlyToOthers).unwrap_err();
        assert!(matches!(err, StoreError::NotAFile { .. }), "{err}");
        assert!(err.to_string().contains("keys.json"), "{err}");
        dir.write_atomic("keys.json", b"{}").unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        assert_eq!(dir.read("keys.json", Access::Private).unwrap(), b"{}");
        assert_eq!(
            dir.names().unwrap(),
            ["keys.json"],
            "no temporary file is left"
        );
        symlink(&outside, dir.path_of("api-token")).unwrap();
        assert!(dir.create_new("api-token", b"x").is_err());
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
    }

    #[test]
    fn a_directory_open_to_others_is_refused_with_the_chmod_that_fixes_it() {
        let (parent, dir) = private_dir();
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(dir);
        let path = parent.path().join("keys");
        // Listable by others, as a fresh checkout's keys/ is: accepted.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        KeyDir::create(&path).expect("a 0755 directory is accepted");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o775)).unwrap();
        let err = KeyDir::create(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod 700 {}", path.display())),
            "{err}"
        );
        assert!(err.contains("0775"), "{err}");
    }

    #[test]
    fn a_file_open_to_others_is_refused_and_trouble_names_missing_files() {
        let (_parent, dir) = private_dir();
        dir.create_new("a", b"x").unwrap();
        assert!(dir.trouble("a", Access::Private).is_none());
        fs::set_permissions(dir.path_of("a"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(dir.trouble("a", Access::ReadOnlyToOthers).is_none());
        let err = dir.read("a", Access::Private).unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod 600 {}", dir.path_of("a").display())),
            "{err}"
        );
        let missing = dir.trouble("b", Access::Private).unwrap();
        assert!(missing.is_not_found(), "{missing}");
    }
}
