//! The file key store seen as an attacker with a foothold in `keys.dir`, and as an operator, would
//! see it: a real directory on a real filesystem, a real service on loopback sockets, and the
//! `tfe-oidc` binary. The store resolves `keys.dir` once, follows no link planted in it, refuses a
//! directory or key file another user could change, deletes only the files it names, and rewrites
//! a key file deleted under a running server (or says on `/readyz` why it cannot).

use crate::common;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Options, TestServer};
use serde_json::Value;
use tfe_oidc::config::RsaBits;
use tfe_oidc::http::auth::development_token;
use tfe_oidc::keys::lifecycle::Policy;
use tfe_oidc::keys::manager::KeyManager;
use tfe_oidc::keys::store::{FileStore, StoreError, read_unlocked};
use tfe_oidc::keys::{KeySet, Kid, SystemClock};

const HOUR: Duration = Duration::from_secs(3600);

/// A key directory inside a fresh temporary directory, holding a committed set (next and current).
fn populated_store() -> (tempfile::TempDir, PathBuf, KeySet) {
    let parent = tempfile::tempdir().unwrap();
    let keys = parent.path().join("keys");
    let set = start_manager(&keys).snapshot().set.clone();
    (parent, keys, set)
}

/// A writer on `keys` (taking its lock until dropped).
fn start_manager(keys: &Path) -> KeyManager {
    let store = common::reopen_store(keys);
    KeyManager::start(
        Box::new(store),
        Arc::new(SystemClock),
        Policy::new(24 * HOUR, HOUR, Duration::from_secs(300)),
    )
    .unwrap_or_else(|e| panic!("the manager starts: {e}"))
}

fn mkdir_0700(path: &Path) {
    fs::DirBuilder::new().mode(0o700).create(path).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Puts a symbolic link to `target` at `at` in one rename, replacing whatever is there.
fn plant_symlink(target: &Path, at: &Path) {
    let staging = at.with_file_name(".planting");
    symlink(target, &staging).unwrap();
    fs::rename(&staging, at).unwrap();
}

fn pem(keys: &Path, kid: &Kid) -> PathBuf {
    keys.join(format!("{kid}.pem"))
}

fn current_kid(set: &KeySet) -> Kid {
    set.current().expect("a current key").kid.clone()
}

/// What a writer and a reader say when opening `keys` fails.
fn refusals(keys: &Path) -> (StoreError, StoreError) {
    let writer = FileStore::open(keys, RsaBits::Rsa2048).expect_err("the writer refuses the store");
    let reader = read_unlocked(keys).expect_err("the reader refuses the store");
    (writer, reader)
}

fn assert_refused_with(keys: &Path, fix: &str) {
    let (writer, reader) = refusals(keys);
    for err in [writer, reader] {
        assert!(matches!(err, StoreError::Insecure { .. }), "{err}");
        assert!(err.to_string().contains(fix), "{err:?} lacks {fix:?}");
    }
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most `limit`.
async fn eventually<T>(limit: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(found) = probe().await {
            return Some(found);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn readyz(server: &TestServer) -> (u16, String) {
    let response = reqwest::get(server.api_url("/readyz")).await.unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

async fn force_rotate(server: &TestServer) -> Value {
    let response = server
        .client()
        .post(server.api_url("/v1/keys/rotate?force=true"))
        .bearer_auth(&server.tokens.keys_only)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "a forced rotation succeeds"
    );
    response.json().await.unwrap()
}

fn kids_of(body: &Value) -> Vec<String> {
    let mut kids: Vec<String> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

fn kids_on_disk(keys: &Path) -> Vec<String> {
    let mut kids: Vec<String> = read_unlocked(keys)
        .unwrap()
        .set
        .keys
        .iter()
        .map(|k| k.kid.to_string())
        .collect();
    kids.sort();
    kids
}

#[tokio::test(flavor = "multi_thread")]
async fn swapping_a_symlinked_keys_dir_while_serving_does_not_redirect_rotations() {
    let parent = tempfile::tempdir().unwrap();
    let (first, second) = (parent.path().join("first"), parent.path().join("second"));
    mkdir_0700(&first);
    mkdir_0700(&second);
    symlink(&first, parent.path().join("keys")).unwrap();
    let server = TestServer::start(Options {
        dir: Some(parent),
        ..Options::default()
    })
    .await;
    let link = server.config.keys.dir.clone();
    assert_eq!(link, server.dir.path().join("keys"));

    plant_symlink(&second, &link);
    let rotated = force_rotate(&server).await;

    assert_eq!(
        fs::read_dir(&second).unwrap().count(),
        0,
        "nothing is written into the directory the link points to now"
    );
    assert_eq!(kids_on_disk(&first), kids_of(&rotated));
    let next = rotated["keys"][0]["kid"].as_str().unwrap();
    assert!(first.join(format!("{next}.pem")).exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_planted_in_keys_dir_are_never_followed_nor_written_through() {
    let server = TestServer::start(Options::default()).await;
    let keys = server.config.keys.dir.clone();
    let outside_dir = tempfile::tempdir().unwrap();
    let outside = outside_dir.path().join("victim");
    fs::write(&outside, b"precious").unwrap();
    let current = current_kid(&read_unlocked(&keys).unwrap().set);
    let stray = format!("{}.pem", "A".repeat(43));

    for name in [
        ".keys.json.tmp".to_owned(),
        format!(".{current}.pem.tmp"),
        stray.clone(),
    ] {
        plant_symlink(&outside, &keys.join(name));
    }
    plant_symlink(&outside, &keys.join("keys.json"));
    plant_symlink(&outside, &pem(&keys, &current));
    let rotated = force_rotate(&server).await;
    // Let the store's check run at least once more on whatever is left.
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert!(
        fs::read(&outside).unwrap() == b"precious",
        "the file outside keys.dir was written through a planted link"
    );
    let manifest = fs::symlink_metadata(keys.join("keys.json")).unwrap();
    assert!(manifest.file_type().is_file(), "keys.json is a file again");
    assert_eq!(kids_on_disk(&keys), kids_of(&rotated));
    for name in [".keys.json.tmp", &format!(".{current}.pem.tmp"), &stray] {
        assert!(
            fs::symlink_metadata(keys.join(name)).is_err(),
            "{name} is removed (the link, not its target)"
        );
    }
    server.mint("prod", "apply").await;
    assert_eq!(readyz(&server).await.0, 200);
    server.stop().await;
}

#[test]
fn a_symlinked_manifest_or_key_file_is_refused_by_readers_and_writers_naming_it() {
    let (parent, keys, set) = populated_store();
    let outside = parent.path().join("outside.json");
    fs::copy(keys.join("keys.json"), &outside).unwrap();
    plant_symlink(&outside, &keys.join("keys.json"));
    let (writer, reader) = refusals(&keys);
    for err in [writer, reader] {
        assert!(matches!(err, StoreError::NotAFile { .. }), "{err}");
        assert!(err.to_string().contains("keys.json"), "{err}");
    }
    fs::rename(&outside, keys.join("keys.json")).unwrap();

    let key = pem(&keys, &current_kid(&set));
    let outside_key = parent.path().join("outside.pem");
    fs::rename(&key, &outside_key).unwrap();
    plant_symlink(&outside_key, &key);
    let reader = read_unlocked(&keys).unwrap_err();
    assert!(matches!(reader, StoreError::NotAFile { .. }), "{reader}");
    assert!(reader.to_string().contains(&key.display().to_string()));
}

#[test]
fn a_keys_dir_or_key_file_open_to_others_or_owned_by_another_user_is_refused_with_the_fix() {
    let (_parent, keys, set) = populated_store();
    let shown = keys.display().to_string();
    for mode in [0o770, 0o775, 0o702] {
        chmod(&keys, mode);
        assert_refused_with(&keys, &format!("chmod 700 {shown}"));
    }
    // Listable by others but writable by no one else (a fresh checkout's keys/): accepted.
    chmod(&keys, 0o755);
    drop(start_manager(&keys));
    chmod(&keys, 0o700);

    let key = pem(&keys, &current_kid(&set));
    chmod(&key, 0o640);
    assert_refused_with(&keys, &format!("chmod 600 {}", key.display()));
    chmod(&key, 0o600);

    let manifest = keys.join("keys.json");
    chmod(&manifest, 0o664);
    assert_refused_with(&keys, &format!("chmod 600 {}", manifest.display()));
    chmod(&manifest, 0o644);
    read_unlocked(&keys).expect("a manifest others may only read is accepted");

    let lock = keys.join(".lock");
    chmod(&lock, 0o666);
    let err = FileStore::open(&keys, RsaBits::Rsa2048)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("chmod 600 {}", lock.display())),
        "{err}"
    );
    chmod(&lock, 0o600);

    let me = fs::metadata(&keys).unwrap().uid();
    std::os::unix::fs::chown(&manifest, Some(me + 4242), None).unwrap();
    assert_refused_with(&keys, &format!("chown {me} {}", manifest.display()));
    std::os::unix::fs::chown(&manifest, Some(me), None).unwrap();
    FileStore::open(&keys, RsaBits::Rsa2048).expect("the store opens once fixed");
}

#[test]
fn keys_list_refuses_a_group_writable_keys_dir_naming_the_chmod() {
    let (parent, keys, _) = populated_store();
    chmod(&keys, 0o770);
    let config = parent.path().join("tfe-oidc.toml");
    fs::write(&config, format!("[keys]\ndir = {keys:?}\n")).unwrap();
    let output = Command::new(common::binary())
        .args(["keys", "list", "--config"])
        .arg(&config)
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 700 {}", keys.display())),
        "{stderr}"
    );
}

#[test]
fn keys_dir_is_created_0700_when_the_development_token_is_written_first() {
    let parent = tempfile::tempdir().unwrap();
    let keys = parent.path().join("state/keys");
    let (token, _) = development_token(&keys).unwrap();
    assert_eq!(fs::metadata(&keys).unwrap().mode() & 0o777, 0o700);
    assert_eq!(fs::metadata(&token).unwrap().mode() & 0o777, 0o600);
    drop(start_manager(&keys));
    development_token(&keys).expect("the same token is read back");

    let open = parent.path().join("open");
    fs::DirBuilder::new().mode(0o775).create(&open).unwrap();
    chmod(&open, 0o775);
    let err = development_token(&open).unwrap_err().to_string();
    assert!(
        err.contains(&format!("chmod 700 {}", open.display())),
        "an existing group-writable directory is refused, not silently changed: {err}"
    );
    assert_eq!(fs::metadata(&open).unwrap().mode() & 0o777, 0o775);
}

#[test]
fn files_the_store_does_not_name_survive_a_start_and_a_rotation() {
    let parent = tempfile::tempdir().unwrap();
    let keys = parent.path().join("keys");
    mkdir_0700(&keys);
    let stray_kid = "S".repeat(43);
    let foreign = [
        "tls.key",
        "discovery.pem",
        "README",
        "notakid.pem",
        ".other.tmp",
        ".discovery.pem.0123456789abcdef.tmp",
    ];
    let own = [
        ".keys.json.0123456789abcdef.tmp".to_owned(),
        ".keys.json.tmp".to_owned(),
        format!("{stray_kid}.pem"),
        format!(".{stray_kid}.pem.fedcba9876543210.tmp"),
    ];
    for name in foreign
        .iter()
        .copied()
        .chain(own.iter().map(String::as_str))
    {
        fs::write(keys.join(name), name).unwrap();
    }
    // A store that was begun (its empty set committed) and then crashed: its key file without
    // a manifest entry is a leftover. (Without keys.json at all it would be a lost manifest.)
    fs::write(keys.join("keys.json"), r#"{"format":1,"keys":[]}"#).unwrap();
    chmod(&keys.join("keys.json"), 0o600);
    let manager = start_manager(&keys);
    for name in &own {
        assert!(
            !keys.join(name).exists(),
            "{name}: the store's own leftover"
        );
    }
    manager.rotate(true).unwrap();
    manager.rotate(true).unwrap();
    drop(manager);
    drop(start_manager(&keys));
    for name in foreign {
        assert_eq!(fs::read_to_string(keys.join(name)).unwrap(), name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_current_key_file_deleted_while_serving_is_rewritten_from_memory_with_the_same_kid() {
    let server = TestServer::start(Options::default()).await;
    let keys = server.config.keys.dir.clone();
    let set = read_unlocked(&keys).unwrap().set;
    let (current, next) = (current_kid(&set), set.next().unwrap().kid.clone());
    let before = fs::read(pem(&keys, &current)).unwrap();
    fs::remove_file(pem(&keys, &current)).unwrap();
    fs::remove_file(pem(&keys, &next)).unwrap();

    let rewritten = eventually(Duration::from_secs(10), async || {
        (pem(&keys, &current).exists() && pem(&keys, &next).exists()).then_some(())
    })
    .await;
    assert!(
        rewritten.is_some(),
        "the key files are rewritten within 10 s"
    );
    assert_eq!(fs::read(pem(&keys, &current)).unwrap(), before);
    let loaded = read_unlocked(&keys).unwrap();
    assert_eq!(loaded.set, set);
    assert!(loaded.signers.contains_key(&current));
    let mode = fs::metadata(pem(&keys, &current)).unwrap().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(readyz(&server).await.0, 200);
    let minted = server.mint("prod", "apply").await;
    assert_eq!(minted["kid"], current.as_str());
    server.stop().await;
}

/// Tests run as root, which no mode keeps from writing, so the rewrite is made to fail by a
/// directory standing where the key file must be.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_file_that_cannot_be_rewritten_makes_readyz_503_naming_it() {
    let server = TestServer::start(Options::default()).await;
    let keys = server.config.keys.dir.clone();
    let current = current_kid(&read_unlocked(&keys).unwrap().set);
    let path = pem(&keys, &current);
    assert_eq!(readyz(&server).await.0, 200);
    // The store's check may rewrite the file between the two steps: then try again.
    while fs::remove_file(&path).is_err() || fs::create_dir(&path).is_err() {}

    let unready = eventually(Duration::from_secs(10), async || {
        let (status, body) = readyz(&server).await;
        (status == 503).then_some(body)
    })
    .await
    .expect("/readyz answers 503 within 10 s");
    assert!(unready.contains(&format!("{current}.pem")), "{unready}");

    fs::remove_dir(&path).unwrap();
    let ready = eventually(Duration::from_secs(10), async || {
        (readyz(&server).await.0 == 200).then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "ready again once the key file is rewritten"
    );
    assert!(fs::symlink_metadata(&path).unwrap().is_file());
    server.stop().await;
}
