//! The Vault transit key store against a real OpenBao (`bao server -dev`: transit built in, KV
//! version 2 at `secret/`), with the narrow token of `deploy/vault/transit-policy.hcl`.
//!
//! - In process, on a fake clock: months of lifecycle in a second, past version 10 (versions are
//!   numbers), with Vault refusing retired versions and trimming unpublished ones.
//! - Two `serve` replicas on one transit key behind one issuer URL (a round-robin TCP balancer),
//!   an OpenBao JWT role logging in with tokens from both in turn through 10+ rotations, one
//!   replica SIGKILLed and restarted, Vault frozen and resumed; no login refused, no private key
//!   in any file they wrote.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use common::bao::{Bao, VAULT_AUDIENCE, deploy_vault};
use common::process::{Server, Setup, ports, tfe_oidc};
use common::{run_body, write_tokens_file};
use tfe_oidc::config::Config;
use tfe_oidc::keys::lifecycle::Policy;
use tfe_oidc::keys::manager::KeyManager;
use tfe_oidc::keys::store::transit::TransitStore;
use tfe_oidc::keys::{Clock, FakeClock, KeyState};

const ROLE: &str = "tfe";
const PERIOD_SECS: u64 = 4;

/// An OpenBao with transit mounted and a token holding only `transit-policy.hcl`, written to
/// `<dir>/vault-token`.
async fn vault(dir: &Path) -> Option<(Bao, PathBuf)> {
    let bao = Bao::start().await?;
    bao.root_write("sys/mounts/transit", json!({ "type": "transit" }))
        .await;
    let policy = std::fs::read_to_string(deploy_vault().join("transit-policy.hcl")).unwrap();
    bao.root_write("sys/policy/tfe-oidc-keys", json!({ "policy": policy }))
        .await;
    let answer = bao
        .root_write(
            "auth/token/create",
            json!({ "policies": ["tfe-oidc-keys"], "no_default_policy": true, "no_parent": true, "ttl": "1h" }),
        )
        .await;
    let path = dir.join("vault-token");
    std::fs::write(&path, answer["auth"]["client_token"].as_str().unwrap()).unwrap();
    Some((bao, path))
}

fn store_toml(bao: &Bao, token: &Path) -> String {
    format!(
        "store = \"vault-transit\"\nrotation_period = \"{PERIOD_SECS}s\"\n[keys.vault]\naddr = {:?}\ntoken_file = {token:?}\nrefresh = \"500ms\"\ntimeout = \"2s\"\n",
        bao.addr
    )
}

async fn transit_key(bao: &Bao) -> Value {
    let (status, key) = bao
        .call(reqwest::Method::GET, "transit/keys/tfe-oidc", Some("root"), None)
        .await;
    assert_eq!(status, 200, "{key}");
    key["data"].clone()
}

fn versions(key: &Value) -> Vec<u64> {
    let mut v: Vec<u64> = key["keys"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect();
    v.sort();
    v
}

/// Whether the RS256 JWS `token` verifies with `jwk`.
fn verifies(token: &str, jwk: &tfe_oidc::keys::PublicJwk) -> bool {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let (input, signature) = token.rsplit_once('.').unwrap();
    let (n, e) = (B64.decode(&jwk.n).unwrap(), B64.decode(&jwk.e).unwrap());
    RsaPublicKeyComponents { n: &n[..], e: &e[..] }
        .verify(
            &RSA_PKCS1_2048_8192_SHA256,
            input.as_bytes(),
            &B64.decode(signature).unwrap(),
        )
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_crosses_version_ten_refuses_retired_versions_and_trims() {
    let dir = tempfile::tempdir().unwrap();
    let Some((bao, token)) = vault(dir.path()).await else {
        return;
    };
    let text = format!(
        "issuer = \"https://issuer.example\"\n[tokens]\nmax_ttl = \"1h\"\ndefault_ttl = \"10m\"\n[discovery]\njwks_max_age = \"1s\"\n[keys]\n{}",
        store_toml(&bao, &token)
    );
    let config = Config::from_parts(&text, &[], None).unwrap();
    let clock = Arc::new(FakeClock::new(1_800_000_000));
    let policy = Policy::new(
        Duration::from_secs(PERIOD_SECS),
        Duration::from_secs(3600),
        Duration::from_secs(1),
    );
    let (c, k) = (config.clone(), clock.clone());
    let manager = tokio::task::spawn_blocking(move || {
        let tfe_oidc::config::StoreKind::VaultTransit(transit) = &c.keys.store else {
            unreachable!()
        };
        let store = TransitStore::open(
            transit,
            c.keys.rsa_bits,
            c.issuer.as_str(),
            tokio::runtime::Handle::current(),
        )
        .unwrap()
        .with_clock(k.clone());
        KeyManager::start(Box::new(store), k, policy).unwrap()
    })
    .await
    .unwrap();
    let manager = Arc::new(manager);
    let first = manager.snapshot();
    assert_eq!(first.set.keys.len(), 2, "a current and a next key");

    // The key is non-exportable: nothing private can be read.
    let key = transit_key(&bao).await;
    assert_eq!(key["exportable"], false);
    assert_eq!(key["type"], "rsa-2048");

    // Twelve scheduled rotations: versions 1..=14, "10" and beyond sorted as numbers.
    let mut kids = Vec::new();
    for _ in 0..12 {
        clock.advance(PERIOD_SECS);
        let m = manager.clone();
        assert!(tokio::task::spawn_blocking(move || m.tick().unwrap()).await.unwrap());
        let snapshot = manager.snapshot();
        let signer = snapshot.signer.clone().expect("a current key signs");
        assert_eq!(signer.kid(), &snapshot.set.current().unwrap().kid);
        kids.push(signer.kid().clone());
        // Each signature is made in Vault by exactly the current version, and verifies.
        let token = tfe_oidc::token::sign(&signer, &json!({"n": kids.len()}))
            .await
            .unwrap();
        let jwk = &snapshot.set.current().unwrap().jwk;
        assert!(verifies(&token, jwk), "token {} verifies", kids.len());
    }
    let key = transit_key(&bao).await;
    assert_eq!(key["latest_version"], 14, "one version per rotation: {key}");
    // The signing floor: retired versions past their grace cannot sign any more.
    clock.advance(60);
    let m = manager.clone();
    tokio::task::spawn_blocking(move || m.check_store()).await.unwrap();
    let key = transit_key(&bao).await;
    let current_version = key["min_encryption_version"].as_u64().unwrap();
    assert_eq!(current_version, 13, "only the current (13) and next (14) sign: {key}");
    let (status, answer) = bao
        .call(
            reqwest::Method::POST,
            "transit/sign/tfe-oidc/sha2-256",
            Some("root"),
            Some(&json!({"input": "aGVsbG8=", "key_version": 12, "signature_algorithm": "pkcs1v15"})),
        )
        .await;
    // OpenBao answers 500 for this refusal.
    assert!(
        status >= 400 && answer.to_string().contains("less than the minimum encryption key version"),
        "a retired version is refused even to root: {status} {answer}"
    );

    // Past max_ttl + 5m every retired key leaves the JWKS, and Vault destroys its version.
    clock.advance(3600 + 300 + 1);
    let m = manager.clone();
    assert!(tokio::task::spawn_blocking(move || m.tick().unwrap()).await.unwrap());
    let snapshot = manager.snapshot();
    // The tick also rotated (a period had passed): only the key it retired is retired.
    let retired: Vec<_> = snapshot
        .set
        .keys
        .iter()
        .filter(|k| k.state == KeyState::Retired)
        .collect();
    assert_eq!(retired.len(), 1, "{:?}", snapshot.set);
    assert_eq!(retired[0].retired_at, Some(clock.now()));
    let key = transit_key(&bao).await;
    let kept = versions(&key);
    assert!(kept.iter().all(|v| *v >= 13), "trimmed to the published versions: {kept:?}");
    assert!(key["min_available_version"].as_u64().unwrap() >= 13, "{key}");

    // A second manager on the same key (a restart, or another replica) sees the same set.
    let (c, k) = (config.clone(), clock.clone());
    let again = tokio::task::spawn_blocking(move || {
        let tfe_oidc::config::StoreKind::VaultTransit(transit) = &c.keys.store else {
            unreachable!()
        };
        let store = TransitStore::open(
            transit,
            c.keys.rsa_bits,
            c.issuer.as_str(),
            tokio::runtime::Handle::current(),
        )
        .unwrap()
        .with_clock(k.clone());
        KeyManager::start(Box::new(store), k, policy).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(again.snapshot().set, manager.snapshot().set);
}
