//! The Vault transit key store against a real OpenBao (`bao server -dev`: transit built in, KV
//! version 2 at `secret/`), with the narrow token of `deploy/vault/transit-policy.hcl`.
//!
//! - In process, on a fake clock: months of lifecycle in a second, past version 10 (versions are
//!   numbers), with Vault refusing retired versions and trimming unpublished ones.
//! - Two `serve` replicas on one transit key behind one issuer URL (a round-robin TCP balancer),
//!   an OpenBao JWT role logging in with tokens from both in turn through 10+ rotations, one
//!   replica SIGKILLed and restarted, Vault frozen then stopped (its port closed) and back; no
//!   login refused, no private key in any file they wrote.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use common::bao::{Bao, VAULT_AUDIENCE};
use common::process::{Server, Setup, ports, run};
use common::{run_body, write_tokens_file};
use tfe_oidc::config::Config;
use tfe_oidc::keys::lifecycle::Policy;
use tfe_oidc::keys::manager::KeyManager;
use tfe_oidc::keys::store::transit::TransitStore;
use tfe_oidc::keys::{Clock, FakeClock, KeyState};

const ROLE: &str = "tfe";
const PERIOD_SECS: u64 = 4;

pub(crate) fn store_toml(vault_addr: &str, token: &Path) -> String {
    format!(
        "store = \"vault-transit\"\nrotation_period = \"{PERIOD_SECS}s\"\n[keys.vault]\naddr = {:?}\ntoken_file = {token:?}\nrefresh = \"500ms\"\ntimeout = \"5s\"\n",
        vault_addr
    )
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

/// A key manager on the transit store of `config`, on `clock` (its calls block: started off the
/// async threads).
async fn manager_on(config: &Config, clock: &Arc<FakeClock>, policy: Policy) -> KeyManager {
    let (config, clock) = (config.clone(), Arc::clone(clock));
    tokio::task::spawn_blocking(move || {
        let tfe_oidc::config::StoreKind::VaultTransit(transit) = &config.keys.store else {
            panic!("the configuration has no transit store")
        };
        let store = TransitStore::open(
            transit,
            config.keys.rsa_bits,
            config.issuer.as_str(),
            tokio::runtime::Handle::current(),
        )
        .unwrap()
        .with_clock(clock.clone());
        KeyManager::start(Box::new(store), clock, policy).unwrap()
    })
    .await
    .unwrap()
}

/// Whether the RS256 JWS `token` verifies with `jwk`.
fn verifies(token: &str, jwk: &tfe_oidc::keys::PublicJwk) -> bool {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let (input, signature) = token.rsplit_once('.').unwrap();
    let (n, e) = (B64.decode(&jwk.n).unwrap(), B64.decode(&jwk.e).unwrap());
    RsaPublicKeyComponents {
        n: &n[..],
        e: &e[..],
    }
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
    let Some((bao, token)) = Bao::start_with_transit(dir.path()).await else {
        return;
    };
    let text = format!(
        "issuer = \"https://issuer.example\"\n[tokens]\nmax_ttl = \"1h\"\ndefault_ttl = \"10m\"\n[discovery]\njwks_max_age = \"1s\"\n[keys]\n{}",
        store_toml(&bao.addr, &token)
    );
    let config = Config::from_parts(&text, &[], None).unwrap();
    let clock = Arc::new(FakeClock::new(1_800_000_000));
    let policy = Policy::new(
        Duration::from_secs(PERIOD_SECS),
        Duration::from_secs(3600),
        Duration::from_secs(1),
    );
    let manager = manager_on(&config, &clock, policy).await;
    let manager = Arc::new(manager);
    let first = manager.snapshot();
    assert_eq!(first.set.keys.len(), 2, "a current and a next key");

    // The policy's token reaches nothing else: no export, no other key, no other secret.
    let narrow = std::fs::read_to_string(&token).unwrap();
    for (method, path) in [
        (reqwest::Method::GET, "transit/export/signing-key/tfe-oidc"),
        (reqwest::Method::GET, "transit/backup/tfe-oidc"),
        (reqwest::Method::GET, "transit/keys/other"),
        (reqwest::Method::POST, "transit/sign/other/sha2-256"),
        (
            reqwest::Method::POST,
            "transit/keys/tfe-oidc/rotate/../../other/rotate",
        ),
        (reqwest::Method::GET, "secret/data/other"),
        (reqwest::Method::DELETE, "transit/keys/tfe-oidc"),
        (reqwest::Method::GET, "sys/mounts"),
    ] {
        let (status, _) = bao.call(method.clone(), path, Some(&narrow), None).await;
        assert!((400..500).contains(&status), "{method} {path}: {status}");
    }

    // The key is non-exportable: nothing private can be read.
    let key = bao.transit_key().await;
    assert_eq!(key["exportable"], false);
    assert_eq!(key["type"], "rsa-2048");

    // Twelve scheduled rotations: versions 1..=14, "10" and beyond sorted as numbers.
    let mut kids = Vec::new();
    for _ in 0..12 {
        clock.advance(PERIOD_SECS);
        let m = manager.clone();
        assert!(
            tokio::task::spawn_blocking(move || m.tick().unwrap())
                .await
                .unwrap()
        );
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
    let key = bao.transit_key().await;
    assert_eq!(key["latest_version"], 14, "one version per rotation: {key}");
    // The signing floor: retired versions past their grace cannot sign any more.
    clock.advance(60);
    let m = manager.clone();
    tokio::task::spawn_blocking(move || m.check_store())
        .await
        .unwrap();
    let key = bao.transit_key().await;
    let current_version = key["min_encryption_version"].as_u64().unwrap();
    assert_eq!(
        current_version, 13,
        "only the current (13) and next (14) sign: {key}"
    );
    let (status, answer) = bao
        .call(
            reqwest::Method::POST,
            "transit/sign/tfe-oidc/sha2-256",
            Some("root"),
            Some(
                &json!({"input": "aGVsbG8=", "key_version": 12, "signature_algorithm": "pkcs1v15"}),
            ),
        )
        .await;
    // OpenBao answers 500 for this refusal.
    assert!(
        status >= 400
            && answer
                .to_string()
                .contains("less than the minimum encryption key version"),
        "a retired version is refused even to root: {status} {answer}"
    );

    // Past max_ttl + 5m every retired key leaves the JWKS, and Vault destroys its version.
    clock.advance(3600 + 300 + 1);
    let m = manager.clone();
    assert!(
        tokio::task::spawn_blocking(move || m.tick().unwrap())
            .await
            .unwrap()
    );
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
    let key = bao.transit_key().await;
    let kept = versions(&key);
    assert!(
        kept.iter().all(|v| *v >= 13),
        "trimmed to the published versions: {kept:?}"
    );
    assert!(
        key["min_available_version"].as_u64().unwrap() >= 13,
        "{key}"
    );

    // A second manager on the same key (a restart, or another replica) sees the same set.
    let again = manager_on(&config, &clock, policy).await;
    assert_eq!(again.snapshot().set, manager.snapshot().set);
}

/// A TCP balancer on loopback: each new connection goes to the next backend in turn (skipping
/// one that refuses), as a load balancer in front of the replicas does.
async fn balancer(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let turn = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let (backends, turn) = (backends.clone(), turn.clone());
            tokio::spawn(async move {
                for _ in 0..backends.len() {
                    let backend = backends[turn.fetch_add(1, Ordering::Relaxed) % backends.len()];
                    if let Ok(mut outbound) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A TCP proxy to `backend` that can be cut (`set(false)`): its port then refuses connections and
/// every open connection is closed, as when the Vault process is down; `set(true)` brings it back
/// on the same port.
async fn cuttable(backend: SocketAddr) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = first.local_addr().unwrap();
    let (up, watch) = tokio::sync::watch::channel(true);
    let connections = watch.clone();
    tokio::spawn(async move {
        let mut listener = Some(first);
        let mut watch = watch;
        loop {
            let current = match listener.take() {
                Some(l) => l,
                None => {
                    if watch.wait_for(|up| *up).await.is_err() {
                        return;
                    }
                    match TcpListener::bind(addr).await {
                        Ok(l) => l,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
            };
            loop {
                tokio::select! {
                    accepted = current.accept() => {
                        let Ok((mut inbound, _)) = accepted else { break };
                        let mut down = connections.clone();
                        tokio::spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect(backend).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = down.wait_for(|up| !*up) => {}
                            }
                        });
                    }
                    changed = watch.wait_for(|up| !*up) => {
                        if changed.is_err() { return; }
                        break;
                    }
                }
            }
        }
    });
    (addr, up)
}

/// One replica's configuration: its own ports and directory, the shared issuer and store.
fn replica(issuer: &str, store: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens_file(dir.path());
    let setup = Setup::with_tokens(
        dir,
        tokens,
        "jwks_max_age = \"1s\"\n",
        &format!("{store}[tokens]\ndefault_ttl = \"2m\"\nmax_ttl = \"5m\"\n"),
    );
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text = text.replacen(
        &format!("issuer = \"http://{}\"", setup.discovery),
        &format!("issuer = {issuer:?}"),
        1,
    );
    std::fs::write(&setup.config, text).unwrap();
    setup
}

/// `POST /v1/tokens` on a replica: the status and the token (if any).
pub(crate) async fn mint(setup: &Setup) -> (u16, Option<String>) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/tokens", setup.api))
        .bearer_auth(&setup.tokens.all)
        .json(&run_body("acme", "prod", "apply"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let Ok(response) = response else {
        return (0, None);
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status != 200 {
        eprintln!("issuance on {} answered {status}: {body}", setup.api);
    }
    (status, body["token"].as_str().map(str::to_owned))
}

pub(crate) fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// Every file under `dir`, read: none may hold a private key.
fn assert_no_private_key(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_no_private_key(&path);
        } else if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains("PRIVATE KEY"),
                "{} holds private key material",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_key_history_through_a_kill_and_vault_frozen_then_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let Some((bao, token)) = Bao::start_with_transit(dir.path()).await else {
        return;
    };
    // The replicas reach Vault through a proxy that can be cut, as if Vault were stopped.
    let vault_addr: SocketAddr = bao.addr.trim_start_matches("http://").parse().unwrap();
    let (proxy, vault_up) = cuttable(vault_addr).await;
    let store = store_toml(&format!("http://{proxy}"), &token);
    // Two replicas behind one balancer, whose address is the issuer.
    let (a_discovery, _) = ports();
    let (b_discovery, _) = ports();
    let lb = balancer(vec![a_discovery, b_discovery]).await;
    let issuer = format!("http://{lb}");
    let mut setups = [replica(&issuer, &store), replica(&issuer, &store)];
    for (setup, discovery) in setups.iter_mut().zip([a_discovery, b_discovery]) {
        let text = std::fs::read_to_string(&setup.config).unwrap();
        let text = text.replacen(
            &format!("listen = \"{}\"", setup.discovery),
            &format!("listen = \"{discovery}\""),
            1,
        );
        std::fs::write(&setup.config, text).unwrap();
        setup.discovery = discovery;
    }
    let mut servers: Vec<Option<Server>> = setups
        .iter()
        .map(|s| Some(s.serve(&[], &[]).ready()))
        .collect();

    // OpenBao trusts the issuer through discovery at the balancer.
    bao.root_write("sys/auth/jwt", json!({ "type": "jwt" }))
        .await;
    bao.root_write(
        "auth/jwt/config",
        json!({ "oidc_discovery_url": issuer, "bound_issuer": issuer }),
    )
    .await;
    bao.root_write(
        &format!("auth/jwt/role/{ROLE}"),
        json!({ "role_type": "jwt", "bound_audiences": [VAULT_AUDIENCE],
                "user_claim": "terraform_full_workspace", "token_policies": ["default"], "token_ttl": "5m" }),
    )
    .await;

    let start = Instant::now();
    let mut logins = 0;
    let mut kids = std::collections::BTreeSet::new();
    let mut killed = false;
    let mut frozen = false;
    let mut stopped = false;
    let mut turn = 0usize;
    while kids.len() < 12 || !killed || !frozen || !stopped {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "12 keys, a kill, a freeze and a stop within 120s; saw {} keys",
            kids.len()
        );
        // Kill replica 1 in the middle of its period, then restart it.
        if !killed && kids.len() >= 3 {
            let mut server = servers[1].take().unwrap();
            server.signal("KILL");
            server.wait_exit(Duration::from_secs(5));
            for _ in 0..4 {
                try_login(&bao, &setups[0], &mut kids, &mut logins).await;
            }
            servers[1] = Some(setups[1].serve(&[], &[]).ready());
            killed = true;
        }
        // Freeze Vault (it accepts connections and answers nothing), later stop it (nothing
        // listens): each time issuance is refused, the JWKS is still served, /readyz says why,
        // and both replicas recover by themselves.
        if !frozen && kids.len() >= 6 {
            bao.freeze();
            assert_out_of_service(&setups, "frozen").await;
            bao.resume();
            wait_recovered(&setups).await;
            frozen = true;
        }
        if !stopped && kids.len() >= 9 {
            vault_up.send(false).unwrap();
            assert_out_of_service(&setups, "stopped").await;
            vault_up.send(true).unwrap();
            wait_recovered(&setups).await;
            stopped = true;
        }
        let setup = &setups[turn % 2];
        turn += 1;
        try_login(&bao, setup, &mut kids, &mut logins).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = start.elapsed().as_secs();
    // Rotations happen once per period between the two, not once per replica.
    let key = bao.transit_key().await;
    let latest = key["latest_version"].as_u64().unwrap();
    assert!(
        latest <= elapsed / PERIOD_SECS + 6,
        "{latest} versions in {elapsed}s with a {PERIOD_SECS}s period: replicas rotated on their own"
    );
    eprintln!(
        "{logins} logins accepted, {} signing keys, {latest} versions in {elapsed}s",
        kids.len()
    );

    // The commands read the same record through Vault while the replicas run: `keys list` shows
    // what the JWKS serves, and `token issue` signs in Vault a token OpenBao accepts.
    // (A rotation between the two reads is seen by `keys list` at once and by the replica
    // within its refresh: the two agree again within a second.)
    let kids_of = |v: &Value| -> std::collections::BTreeSet<String> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut agreed = false;
    for _ in 0..10 {
        let mut list = setups[0].command(&["keys", "list", "--format", "json"]);
        let listed = run(&mut list);
        assert!(
            listed.status.success(),
            "keys list: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let jwks: Value = reqwest::get(format!("http://{}/.well-known/jwks", setups[0].discovery))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if kids_of(&listed) == kids_of(&jwks) {
            agreed = true;
            break;
        }
    }
    assert!(agreed, "keys list never showed what the JWKS serves");
    let issued = run(&mut setups[0].issue_args("apply"));
    assert!(
        issued.status.success(),
        "token issue: {}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let token = String::from_utf8(issued.stdout).unwrap().trim().to_owned();
    if let Err(e) = bao.login(ROLE, &token).await {
        panic!("a token from `token issue` was refused: {e}");
    }
    for server in servers.into_iter().flatten() {
        server.stop();
    }
    for setup in &setups {
        assert_no_private_key(setup.dir.path());
    }
}

/// After 3 s without Vault: issuance answers 503, the JWKS is served, `/readyz` answers 503.
async fn assert_out_of_service(setups: &[Setup], how: &str) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    for setup in setups {
        let (status, token) = mint(setup).await;
        assert_eq!(
            (status, token.is_some()),
            (503, false),
            "issuance while vault is {how}"
        );
        let jwks = reqwest::get(format!("http://{}/.well-known/jwks", setup.discovery))
            .await
            .unwrap();
        assert_eq!(jwks.status(), 200, "the JWKS while vault is {how}");
        let ready = reqwest::get(format!("http://{}/readyz", setup.api))
            .await
            .unwrap();
        assert_eq!(ready.status(), 503, "/readyz while vault is {how}");
    }
}

/// Waits until both replicas issue tokens again.
async fn wait_recovered(setups: &[Setup]) {
    for setup in setups {
        let deadline = Instant::now() + Duration::from_secs(20);
        while mint(setup).await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "a replica did not recover within 20s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Mints on `setup` and logs in to OpenBao with the token: a refusal fails the test.
async fn try_login(
    bao: &Bao,
    setup: &Setup,
    kids: &mut std::collections::BTreeSet<String>,
    logins: &mut usize,
) {
    let (status, token) = mint(setup).await;
    assert_eq!(status, 200, "issuance on {}", setup.api);
    let token = token.unwrap();
    if let Err(e) = bao.login(ROLE, &token).await {
        let mut served = String::new();
        for url in [format!("http://{}/.well-known/jwks", setup.discovery)] {
            if let Ok(r) = reqwest::get(&url).await {
                served.push_str(&r.text().await.unwrap_or_default());
            }
        }
        panic!(
            "login refused after {} logins for a token of kid {} from {}: {e}\nkids so far: {kids:?}\nits replica serves: {served}\nits log: {}",
            logins,
            kid_of(&token),
            setup.api,
            std::fs::read_dir(setup.dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".stderr"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
    }
    kids.insert(kid_of(&token));
    *logins += 1;
}
