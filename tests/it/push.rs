//! Push mode against real OpenBao servers (`bao server -dev`), with no discovery listener at all:
//! the issuer writes each target's `auth/jwt/config` itself, with the narrow token of
//! `deploy/vault/push-policy.hcl`. Unreachable targets are frozen servers (SIGSTOP): they accept
//! connections and answer nothing, as a Vault behind a broken network does.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_lc_rs::rsa::{KeyPair, KeySize};
use serde_json::{Value, json};

use common::bao::{Bao, VAULT_AUDIENCE, deploy_vault};
use common::{Options, TestServer, run_body};

const ROLE: &str = "tfe";
const PERIOD_SECS: u64 = 4;

/// An OpenBao with a JWT mount, a role, a config by hand (a stranger's key and a default role),
/// and a push token with only `push-policy.hcl`, written to `<dir>/push-token-<n>`.
async fn target(dir: &Path, n: usize) -> Option<(Bao, PathBuf)> {
    let bao = Bao::start().await?;
    bao.root_write("sys/auth/jwt", json!({ "type": "jwt" }))
        .await;
    let policy = std::fs::read_to_string(deploy_vault().join("push-policy.hcl")).unwrap();
    bao.root_write("sys/policy/tfe-oidc-push", json!({ "policy": policy }))
        .await;
    write_role(&bao).await;
    write_config_by_hand(&bao).await;
    let answer = bao
        .root_write(
            "auth/token/create",
            json!({ "policies": ["tfe-oidc-push"], "no_default_policy": true, "no_parent": true, "ttl": "1h" }),
        )
        .await;
    let path = dir.join(format!("push-token-{n}"));
    std::fs::write(&path, answer["auth"]["client_token"].as_str().unwrap()).unwrap();
    Some((bao, path))
}

async fn write_role(bao: &Bao) {
    bao.root_write(
        &format!("auth/jwt/role/{ROLE}"),
        json!({ "role_type": "jwt", "bound_audiences": [VAULT_AUDIENCE],
                "user_claim": "terraform_full_workspace", "token_policies": ["default"], "token_ttl": "5m" }),
    )
    .await;
}

/// What an operator may have written: some other key, some other issuer, a default role.
async fn write_config_by_hand(bao: &Bao) {
    bao.root_write(
        "auth/jwt/config",
        json!({ "jwt_validation_pubkeys": [stranger_pem()], "bound_issuer": "https://elsewhere.example",
                "default_role": ROLE }),
    )
    .await;
}

fn stranger_pem() -> String {
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    tfe_oidc::push::public_key_pem(&tfe_oidc::keys::public_jwk(&pair)).unwrap()
}

/// A tfe-oidc without a discovery listener, pushing to `targets`, rotating every 4s.
async fn issuer(targets: &[(&Bao, &Path)], repair: &str) -> TestServer {
    let mut extra = "[exchange]\nvault_timeout = \"2s\"\n".to_owned();
    for (bao, token) in targets {
        extra.push_str(&format!(
            "[[push]]\naddr = {:?}\nmount = \"jwt\"\ntoken_file = {:?}\nrepair_interval = {repair:?}\n",
            bao.addr, token
        ));
    }
    let server = TestServer::start(Options {
        extra_toml: extra,
        discovery_toml: "enabled = false\njwks_max_age = \"1s\"\n".into(),
        keys_toml: format!("rotation_period = \"{PERIOD_SECS}s\"\n"),
        ..Options::default()
    })
    .await;
    assert!(
        server.running.discovery_addr.is_none(),
        "no discovery listener"
    );
    wait_until(
        "every target holds the key set",
        Duration::from_secs(20),
        || async { readyz(&server).await == (200, "ready\n".to_owned()) },
    )
    .await;
    server
}

async fn readyz(server: &TestServer) -> (u16, String) {
    let response = reqwest::get(server.api_url("/readyz")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn metrics(server: &TestServer) -> String {
    reqwest::get(server.api_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn mint(server: &TestServer) -> Value {
    server.mint_body(&run_body("acme", "prod", "apply")).await
}

fn token(minted: &Value) -> &str {
    minted["token"].as_str().unwrap()
}

fn rotations(server: &TestServer) -> u64 {
    server.running.state.manager.snapshot().rotations
}

fn current_kid(server: &TestServer) -> String {
    let snapshot = server.running.state.manager.snapshot();
    snapshot.set.current().unwrap().kid.to_string()
}

async fn jwt_config(bao: &Bao) -> Value {
    let (status, body) = bao
        .call(reqwest::Method::GET, "auth/jwt/config", Some("root"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

/// The default role is used: the login names no role.
async fn login(bao: &Bao, minted: &Value) -> Result<Value, String> {
    bao.login_at("jwt", "", token(minted)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_minted_across_ten_rotations_all_log_in_and_other_settings_survive() {
    let dir = tempfile::tempdir().unwrap();
    let Some((bao, token_file)) = target(dir.path(), 0).await else {
        return;
    };
    let server = issuer(&[(&bao, &token_file)], "5m").await;
    let start = Instant::now();
    let (mut logins, mut kids) = (0, std::collections::BTreeSet::new());
    while rotations(&server) < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "10 rotations take too long"
        );
        let minted = mint(&server).await;
        kids.insert(minted["kid"].as_str().unwrap().to_owned());
        if let Err(e) = login(&bao, &minted).await {
            panic!(
                "login {logins} refused after {} rotations: {e}",
                rotations(&server)
            );
        }
        logins += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(kids.len() >= 10, "tokens of {} keys", kids.len());
    let config = jwt_config(&bao).await;
    assert_eq!(config["default_role"], ROLE, "{config}");
    assert_eq!(config["bound_issuer"], server.issuer(), "{config}");
    assert_eq!(config["jwt_supported_algs"], json!(["RS256"]), "{config}");
    let published = server.running.state.manager.snapshot().set.keys.len();
    assert_eq!(
        config["jwt_validation_pubkeys"].as_array().unwrap().len(),
        published
    );
    let text = metrics(&server).await;
    let name = format!("{}/jwt", bao.addr);
    assert!(
        text.contains(&format!(
            "tfe_oidc_push_total{{target=\"{name}\",outcome=\"ok\"}}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "tfe_oidc_push_last_success_seconds{{target=\"{name}\"}}"
        )),
        "{text}"
    );
    assert!(text.contains("tfe_oidc_rotation_held 0"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_a_revoked_key_is_refused_on_the_very_next_login() {
    let dir = tempfile::tempdir().unwrap();
    let Some((bao, token_file)) = target(dir.path(), 0).await else {
        return;
    };
    let server = issuer(&[(&bao, &token_file)], "5m").await;
    let minted = mint(&server).await;
    login(&bao, &minted).await.expect("a fresh token logs in");
    let kid = minted["kid"].as_str().unwrap();
    let response = server
        .client()
        .post(server.api_url(&format!("/v1/keys/{kid}/revoke")))
        .bearer_auth(&server.tokens.all)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["push"][0]["key_gone"], true, "{answer}");
    assert_eq!(
        answer["push"][0]["target"],
        format!("{}/jwt", bao.addr),
        "{answer}"
    );
    let refused = login(&bao, &minted)
        .await
        .expect_err("the revoked key's token is refused");
    assert!(refused.contains("signature"), "{refused}");
    login(&bao, &mint(&server).await)
        .await
        .expect("the new current key's token logs in");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repair_push_restores_a_config_rewritten_or_deleted_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let Some((bao, token_file)) = target(dir.path(), 0).await else {
        return;
    };
    let server = issuer(&[(&bao, &token_file)], "1s").await;
    let minted = mint(&server).await;
    login(&bao, &minted).await.expect("pushed");
    write_config_by_hand(&bao).await;
    login(&bao, &minted)
        .await
        .expect_err("the hand-written config holds a stranger's key");
    wait_until(
        "the repair push rewrites the config",
        Duration::from_secs(10),
        || async { login(&bao, &minted).await.is_ok() },
    )
    .await;
    // Deleted: the mount itself, with its config and roles, as a restore from an old snapshot.
    bao.call(reqwest::Method::DELETE, "sys/auth/jwt", Some("root"), None)
        .await;
    bao.root_write("sys/auth/jwt", json!({ "type": "jwt" }))
        .await;
    write_role(&bao).await;
    wait_until(
        "the repair push writes a config on a new mount",
        Duration::from_secs(10),
        || async { bao.login_at("jwt", ROLE, token(&minted)).await.is_ok() },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_holds_rotation_back_and_both_catch_up_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some((up, up_token)) = target(dir.path(), 0).await else {
        return;
    };
    let Some((down, down_token)) = target(dir.path(), 1).await else {
        return;
    };
    let server = issuer(&[(&up, &up_token), (&down, &down_token)], "5m").await;
    down.freeze();
    let before = rotations(&server);
    // The next key was pushed to both before the freeze: one more rotation may happen. The key
    // after it never reached the frozen target, so rotation stops there.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4 * PERIOD_SECS) {
        let minted = mint(&server).await;
        login(&up, &minted)
            .await
            .expect("the reachable target keeps working");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let held_at = rotations(&server);
    assert!(
        held_at <= before + 1,
        "rotations went on: {before} -> {held_at}"
    );
    let held_kid = current_kid(&server);
    tokio::time::sleep(Duration::from_secs(PERIOD_SECS)).await;
    assert_eq!(
        current_kid(&server),
        held_kid,
        "the current key keeps signing"
    );
    assert!(metrics(&server).await.contains("tfe_oidc_rotation_held 1"));
    let (status, body) = readyz(&server).await;
    assert_eq!(status, 200, "the current key is held by both: {body}");
    assert!(body.contains(&down.addr), "{body}");
    down.resume();
    wait_until("rotation resumes", Duration::from_secs(60), || async {
        rotations(&server) >= held_at + 2
    })
    .await;
    wait_until(
        "both targets hold the set",
        Duration::from_secs(30),
        || async { readyz(&server).await == (200, "ready\n".to_owned()) },
    )
    .await;
    let minted = mint(&server).await;
    login(&up, &minted)
        .await
        .expect("the first target caught up");
    login(&down, &minted)
        .await
        .expect("the second target caught up");
    assert_eq!(jwt_config(&down).await["default_role"], ROLE);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_policy_allows_the_config_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let Some((bao, token_file)) = target(dir.path(), 0).await else {
        return;
    };
    bao.root_write("sys/auth/other", json!({ "type": "jwt" }))
        .await;
    let push = std::fs::read_to_string(&token_file).unwrap();
    let status = |method: reqwest::Method, path: &'static str, body: Option<Value>| {
        let (bao, push) = (&bao, push.clone());
        async move { bao.call(method, path, Some(&push), body.as_ref()).await.0 }
    };
    use reqwest::Method;
    assert_eq!(status(Method::GET, "auth/jwt/config", None).await, 200);
    // Its own lookup, for renewing a periodic token from the file.
    assert_eq!(
        status(Method::GET, "auth/token/lookup-self", None).await,
        200
    );
    let config = jwt_config(&bao).await;
    assert_eq!(
        status(Method::POST, "auth/jwt/config", Some(config)).await,
        204
    );
    for (method, path) in [
        (Method::GET, "auth/jwt/role/tfe"),
        (Method::POST, "auth/jwt/role/tfe"),
        (Method::GET, "auth/other/config"),
        (Method::POST, "auth/other/config"),
        (Method::GET, "secret/data/anything"),
        (Method::POST, "sys/policy/tfe-oidc-push"),
        (Method::POST, "sys/auth/more"),
        (Method::POST, "auth/token/create"),
        (Method::GET, "auth/token/accessors"),
        (Method::DELETE, "sys/auth/jwt"),
    ] {
        let body = (method == Method::POST).then(|| json!({ "policies": ["root"] }));
        assert_eq!(
            status(method.clone(), path, body).await,
            403,
            "{method} {path}"
        );
    }
}

/// A gate that lets only the kids it was told about sign.
struct Holds(std::sync::Mutex<Vec<tfe_oidc::keys::Kid>>);

impl tfe_oidc::keys::manager::SignGate for Holds {
    fn may_sign(&self, kid: &tfe_oidc::keys::Kid) -> bool {
        self.0.lock().unwrap().contains(kid)
    }
}

#[test]
fn a_due_rotation_waits_for_the_gate_and_retired_keys_still_expire() {
    use tfe_oidc::keys::lifecycle::Policy;
    use tfe_oidc::keys::manager::KeyManager;
    use tfe_oidc::keys::store::FileStore;
    let dir = tempfile::tempdir().unwrap();
    let clock = tfe_oidc::keys::FakeClock::new(1_000_000);
    let store =
        FileStore::open(&dir.path().join("keys"), tfe_oidc::config::RsaBits::Rsa2048).unwrap();
    let policy = Policy::new(
        Duration::from_secs(100),
        Duration::from_secs(10),
        Duration::from_secs(25),
    );
    let manager =
        KeyManager::start(Box::new(store), std::sync::Arc::new(clock.clone()), policy).unwrap();
    let gate = Holds(std::sync::Mutex::new(Vec::new()));
    clock.advance(100);
    let next = manager.snapshot().set.next().unwrap().kid.clone();
    let ticked = manager.tick_gated(&gate).unwrap();
    assert_eq!(ticked.held, Some(next.clone()));
    assert!(!ticked.changed);
    assert_eq!(manager.snapshot().rotations, 0);
    gate.0.lock().unwrap().push(next.clone());
    let ticked = manager.tick_gated(&gate).unwrap();
    assert_eq!((ticked.changed, ticked.held), (true, None));
    assert_eq!(manager.snapshot().set.current().unwrap().kid, next);
    // The retired key (10s tokens + 300s margin) expires even while the following rotation is held.
    clock.advance(400);
    let ticked = manager.tick_gated(&gate).unwrap();
    assert!(ticked.changed && ticked.held.is_some(), "{ticked:?}");
    assert_eq!(manager.snapshot().set.keys.len(), 2);
    assert_eq!(manager.snapshot().set.current().unwrap().kid, next);
}

#[test]
fn check_config_names_every_push_problem_and_unreadable_file() {
    let text = "[discovery]\nenabled = \"no\"\n[[push]]\naddr = \"ftp://x\"\nmount = \"jwt\"\ntoken_file = \"/nonexistent\"\n[[push]]\nmount = \"\"\n";
    let error = tfe_oidc::config::Config::from_parts(text, &[], None).unwrap_err();
    let keys: Vec<&str> = error.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "discovery.enabled",
            "push[0].addr",
            "push[1].addr",
            "push[1].mount",
            "push[1].token_file"
        ],
        "{error}"
    );
    let text = "[[push]]\naddr = \"https://v\"\nmount = \"jwt\"\ntoken_file = \"/nonexistent/t\"\nca_file = \"/nonexistent/ca\"\n";
    let config = tfe_oidc::config::Config::from_parts(text, &[], None).unwrap();
    assert!(config.discovery_enabled);
    let error = tfe_oidc::push::read_files(&config.push).unwrap_err();
    let keys: Vec<&str> = error.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["push[0].token_file", "push[0].ca_file"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approle_login_pushes_with_the_push_policy_only() {
    let dir = tempfile::tempdir().unwrap();
    let Some((bao, _)) = target(dir.path(), 0).await else {
        return;
    };
    bao.root_write("sys/auth/approle", json!({ "type": "approle" }))
        .await;
    bao.root_write(
        "auth/approle/role/tfe-oidc",
        json!({ "token_policies": ["tfe-oidc-push"], "token_no_default_policy": true, "token_ttl": "1h" }),
    )
    .await;
    let (_, role) = bao
        .call(
            reqwest::Method::GET,
            "auth/approle/role/tfe-oidc/role-id",
            Some("root"),
            None,
        )
        .await;
    let secret = bao
        .root_write("auth/approle/role/tfe-oidc/secret-id", json!({}))
        .await;
    let secret_file = dir.path().join("secret-id");
    std::fs::write(&secret_file, secret["data"]["secret_id"].as_str().unwrap()).unwrap();
    let extra = format!(
        "[exchange]\nvault_timeout = \"2s\"\n[[push]]\naddr = {:?}\nmount = \"jwt\"\nrole_id = {:?}\nsecret_id_file = {:?}\n",
        bao.addr,
        role["data"]["role_id"].as_str().unwrap(),
        secret_file
    );
    let server = TestServer::start(Options {
        extra_toml: extra,
        discovery_toml: "enabled = false\n".into(),
        ..Options::default()
    })
    .await;
    wait_until("the approle push", Duration::from_secs(20), || async {
        readyz(&server).await == (200, "ready\n".to_owned())
    })
    .await;
    login(&bao, &mint(&server).await)
        .await
        .expect("pushed through an approle login");
    server.stop().await;
}

/// The exchange signs behind the same gate as `/v1/tokens`: once the current key is one a
/// (frozen) target does not hold, `/readyz`, `/v1/tokens` and `/v1/credentials` all answer 503,
/// and the exchange mints nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_waits_for_the_push_gate_like_token_issuance() {
    let dir = tempfile::tempdir().unwrap();
    let Some((up, up_token)) = target(dir.path(), 0).await else {
        return;
    };
    let Some((down, down_token)) = target(dir.path(), 1).await else {
        return;
    };
    let server = issuer(&[(&up, &up_token), (&down, &down_token)], "5m").await;
    let exchange = json!({"run": run_body("acme", "prod", "apply"),
        "variables": {"TFC_WORKLOAD_IDENTITY_AUDIENCE": VAULT_AUDIENCE}});
    let (status, body) = post(&server, "/v1/credentials", &exchange).await;
    assert_eq!(status, 200, "the gate is open: {body}");
    down.freeze();
    // The next key reached both targets before the freeze; the one after it never does.
    let manager = std::sync::Arc::clone(&server.running.state.manager);
    tokio::task::spawn_blocking(move || {
        manager.rotate(true).unwrap();
        manager.rotate(true).unwrap();
    })
    .await
    .unwrap();
    wait_until("readyz sees the gate", Duration::from_secs(10), || async {
        readyz(&server).await.0 == 503
    })
    .await;
    let (status, body) = post(&server, "/v1/tokens", &run_body("acme", "prod", "apply")).await;
    assert_eq!(status, 503, "{body}");
    let before = metrics(&server).await;
    let (status, body) = post(&server, "/v1/credentials", &exchange).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["message"],
        "a push target does not hold the current key yet, so no token is signed with it; see /readyz and the server log"
    );
    let issued = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("tfe_oidc_tokens_issued_total{phase=\"apply\"}"))
            .map(str::to_owned)
    };
    assert_eq!(
        issued(&metrics(&server).await),
        issued(&before),
        "a token was minted"
    );
    down.resume();
    server.stop().await;
}

async fn post(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    server.post_as(path, &server.tokens.all, body).await
}
