//! Vault in the loop: a real OpenBao 2.7.2 (`bao server -dev`, one per test) discovers this
//! issuer over HTTPS with a private CA, trusts its tokens through the role TFE's documentation
//! writes, refuses what it must with its own reasons, and keeps trusting the issuer across key
//! rotations (under load), forced rotations, revocations and restarts.
//!
//! Every OpenBao here is wired by `deploy/vault/configure.sh` itself, run with `bao` as the CLI,
//! so the documented wiring cannot rot. The JWKS fetches OpenBao makes are counted on the
//! issuer's own `/metrics`, which is how the revocation test shows exactly when OpenBao stops
//! trusting a revoked key.

use crate::common;
use futures_util::FutureExt;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rsa::{KeyPair, KeySize};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use tfe_oidc::keys::{FakeClock, SigningKey};
use tfe_oidc::token::claims::Claims;

use common::bao::{Bao, VAULT_AUDIENCE, deploy_vault, reasons};
use common::{Options, TestServer, module_test_body, run_body, stack_body};

/// The role `configure.sh` writes for ORG=acme WORKSPACE=prod (and `role.json` holds).
const RUN_ROLE: &str = "tfe-acme-prod";
const POLICY: &str = "tfe-acme-prod";
const JWKS_FETCHES: &str =
    "tfe_oidc_http_requests_total{listener=\"discovery\",route=\"/.well-known/jwks\"";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs `deploy/vault/configure.sh` against `bao` for workspace acme/prod of `server`, with
/// `extra` parameters; returns its stdout.
fn wire(bao: &Bao, server: &TestServer, extra: &[(&str, &str)]) -> String {
    let ca = server.pki.as_ref().expect("an HTTPS issuer").ca.clone();
    let ca = ca.to_str().unwrap().to_owned();
    let mut env = vec![
        ("ISSUER", server.issuer()),
        ("CA_FILE", ca.as_str()),
        ("ORG", "acme"),
        ("WORKSPACE", "prod"),
    ];
    env.extend_from_slice(extra);
    tokio::task::block_in_place(|| bao.configure(&env))
}

/// An OpenBao, and a tfe-oidc with HTTPS discovery (a CA made now) wired into it.
async fn bao_and_issuer(options: Options) -> Option<(Bao, TestServer)> {
    let bao = Bao::start().await?;
    let server = TestServer::start(Options {
        tls: true,
        ..options
    })
    .await;
    let out = wire(&bao, &server, &[]);
    assert!(out.contains("TFC_VAULT_RUN_ROLE=tfe-acme-prod"), "{out}");
    Some((bao, server))
}

fn token_of(minted: &Value) -> &str {
    minted["token"].as_str().expect("a token")
}

fn kid_of(minted: &Value) -> String {
    minted["kid"].as_str().expect("a kid").to_owned()
}

/// The claims of a compact JWS (not verified: for forging look-alikes).
fn claims_of(token: &str) -> Claims {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

/// An RSA key this issuer never made, let alone published.
fn unpublished_key() -> SigningKey {
    SigningKey::new(KeyPair::generate(KeySize::Rsa2048).unwrap())
}

/// An RS256 JWS of `claims` with header kid `kid`, signed by `key`.
fn forge(key: &SigningKey, kid: &str, claims: &Claims) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(serde_json::to_vec(claims).unwrap())
    );
    let signature = key.sign(input.as_bytes()).now_or_never().unwrap().unwrap();
    format!("{input}.{}", B64.encode(signature))
}

async fn metrics(server: &TestServer) -> String {
    server
        .client()
        .get(server.api_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of the samples whose line starts with `prefix`.
fn sample_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn rotations(server: &TestServer) -> u64 {
    sample_sum(&metrics(server).await, "tfe_oidc_key_rotations_total ")
}

/// JWKS fetches the tests themselves made, per running service.
static OWN_JWKS_FETCHES: Mutex<BTreeMap<usize, u64>> = Mutex::new(BTreeMap::new());

fn service_id(server: &TestServer) -> usize {
    server.id
}

/// How many times OpenBao fetched the JWKS from this running service: the requests the
/// discovery listener counted, less the test's own.
async fn jwks_fetches(server: &TestServer) -> u64 {
    let own = OWN_JWKS_FETCHES
        .lock()
        .unwrap()
        .get(&service_id(server))
        .copied()
        .unwrap_or(0);
    sample_sum(&metrics(server).await, JWKS_FETCHES) - own
}

/// The kids in the served JWKS.
async fn published_kids(server: &TestServer) -> BTreeSet<String> {
    *OWN_JWKS_FETCHES
        .lock()
        .unwrap()
        .entry(service_id(server))
        .or_insert(0) += 1;
    common::jwks_kids(&server.jwks().await)
}

/// `POST` to a keys route with the all-scopes token.
async fn keys_post(server: &TestServer, path: &str) -> (u16, Value) {
    let response = server
        .client()
        .post(server.api_url(path))
        .bearer_auth(&server.tokens.all)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn assert_refused(result: Result<Value, String>, reason: &str, what: &str) {
    match result {
        Ok(auth) => panic!("OpenBao accepted {what}: {auth}"),
        Err(errors) => assert_eq!(errors, reason, "OpenBao refused {what} for another reason"),
    }
}

fn assert_accepted(result: Result<Value, String>, what: &str) -> Value {
    result.unwrap_or_else(|e| panic!("OpenBao refused {what}: {e}"))
}

/// The role as TFE documents it, discovered over HTTPS with a private CA and `bound_issuer`:
/// plan and apply tokens of the workspace log in, and the Vault token reads what the policy
/// allows and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn the_tfe_documented_role_logs_in_and_its_policy_gates_secrets() {
    let Some((bao, server)) = bao_and_issuer(Options::default()).await else {
        return;
    };
    assert!(server.issuer().starts_with("https://127.0.0.1:"));

    // What configure.sh wrote is what deploy/vault/role.json documents.
    let (status, config) = bao
        .call(reqwest::Method::GET, "auth/jwt/config", Some("root"), None)
        .await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["data"]["oidc_discovery_url"], server.issuer());
    assert_eq!(config["data"]["bound_issuer"], server.issuer());
    let (status, role) = bao
        .call(
            reqwest::Method::GET,
            &format!("auth/jwt/role/{RUN_ROLE}"),
            Some("root"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{role}");
    let documented: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy_vault().join("role.json")).unwrap())
            .unwrap();
    let role = &role["data"];
    for field in [
        "role_type",
        "bound_audiences",
        "bound_claims_type",
        "bound_claims",
        "user_claim",
        "token_policies",
    ] {
        assert_eq!(role[field], documented[field], "role field {field}");
    }
    assert_eq!(role["token_ttl"], 1200);
    assert_eq!(
        role["bound_claims"]["sub"],
        "organization:acme:project:*:workspace:prod:run_phase:*"
    );

    bao.kv_put("tfe/acme/prod/db", json!({"password": "prod-pw"}))
        .await;
    bao.kv_put("tfe/acme/staging/db", json!({"password": "staging-pw"}))
        .await;

    for phase in ["plan", "apply"] {
        let minted = server.mint("prod", phase).await;
        let auth = assert_accepted(
            bao.login(RUN_ROLE, token_of(&minted)).await,
            &format!("a {phase} token of acme/prod"),
        );
        let policies: Vec<&str> = auth["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(policies.contains(&POLICY), "{auth}");
        assert_eq!(auth["metadata"]["role"], RUN_ROLE);
        assert_eq!(auth["lease_duration"], 1200);
        let vault_token = auth["client_token"].as_str().unwrap();

        let (status, secret) = bao
            .call(
                reqwest::Method::GET,
                "secret/data/tfe/acme/prod/db",
                Some(vault_token),
                None,
            )
            .await;
        assert_eq!(status, 200, "the policy allows this read: {secret}");
        assert_eq!(secret["data"]["data"]["password"], "prod-pw");
        assert_eq!(
            bao.read_status(vault_token, "secret/data/tfe/acme/staging/db")
                .await,
            403,
            "another workspace's secret"
        );
        let (status, _) = bao
            .call(
                reqwest::Method::PUT,
                "secret/data/tfe/acme/prod/db",
                Some(vault_token),
                Some(&json!({"data": {"password": "x"}})),
            )
            .await;
        assert_eq!(status, 403, "the policy grants read only");
        assert_eq!(bao.read_status(vault_token, "sys/mounts").await, 403);

        // The entity alias is the user_claim, terraform_full_workspace.
        let (status, me) = bao
            .call(
                reqwest::Method::GET,
                "auth/token/lookup-self",
                Some(vault_token),
                None,
            )
            .await;
        assert_eq!(status, 200, "the policy lets TFE look its token up: {me}");
        assert_eq!(
            me["data"]["display_name"],
            "jwt-organization:acme:project:Default Project:workspace:prod"
        );
    }
    server.stop().await;
}

/// OpenBao refuses, with its own words: another workspace, another organization, another
/// audience, a key this issuer never published, and a forged injection of `:` into a name
/// (which the API refuses to sign in the first place).
#[tokio::test(flavor = "multi_thread")]
async fn openbao_refuses_what_the_role_does_not_allow_with_its_own_reasons() {
    let Some((bao, server)) = bao_and_issuer(Options::default()).await else {
        return;
    };
    let good = server.mint("prod", "apply").await;
    assert_eq!(claims_of(token_of(&good)).aud, VAULT_AUDIENCE);
    assert_accepted(
        bao.login(RUN_ROLE, token_of(&good)).await,
        "the workspace's own token",
    );

    let other_workspace = server.mint("staging", "apply").await;
    assert_refused(
        bao.login(RUN_ROLE, token_of(&other_workspace)).await,
        reasons::SUB_MISMATCH,
        "another workspace's token",
    );

    let (status, other_org) = server
        .post_token(&run_body("globex", "prod", "apply"))
        .await;
    assert_eq!(status, 200, "{other_org}");
    assert_refused(
        bao.login(RUN_ROLE, token_of(&other_org)).await,
        reasons::SUB_MISMATCH,
        "another organization's token",
    );

    let mut body = run_body("acme", "prod", "apply");
    body["audience"] = "aws.workload.identity".into();
    let (status, aws) = server.post_token(&body).await;
    assert_eq!(status, 200, "{aws}");
    assert_eq!(claims_of(token_of(&aws)).aud, "aws.workload.identity");
    assert_refused(
        bao.login(RUN_ROLE, token_of(&aws)).await,
        reasons::AUDIENCE,
        "a token for AWS",
    );

    // A token of the right shape signed by a key this issuer never published: under its own
    // kid (unknown to OpenBao, which refetches the JWKS and still does not find it), and under
    // the kid of the issuer's current key.
    let published = published_kids(&server).await;
    let intruder = unpublished_key();
    assert!(!published.contains(intruder.kid().as_str()));
    let mut claims = claims_of(token_of(&good));
    claims.jti = "f0f0f0f0-0000-4000-8000-000000000001".into();
    assert_refused(
        bao.login(
            RUN_ROLE,
            &forge(&intruder, intruder.kid().as_str(), &claims),
        )
        .await,
        reasons::SIGNATURE,
        "a token signed by an unpublished key",
    );
    assert_refused(
        bao.login(RUN_ROLE, &forge(&intruder, &kid_of(&good), &claims))
            .await,
        reasons::SIGNATURE,
        "a token claiming the current kid but signed by another key",
    );

    // Claim injection: a workspace "staging" whose project is named so that its sub matches the
    // prod role's glob (`*` matches ':'). The API refuses every such name...
    let injected_project = "x:workspace:prod:run_phase:x";
    let cases = [
        (
            "project.name",
            run_body("acme", "staging", "apply"),
            "project",
            injected_project,
        ),
        (
            "workspace.name",
            run_body("acme", "prod", "apply"),
            "workspace",
            "prod:run_phase:apply",
        ),
        (
            "workspace.name",
            run_body("acme", "prod", "apply"),
            "workspace",
            "pro*",
        ),
        (
            "organization.name",
            run_body("acme", "prod", "apply"),
            "organization",
            "acme:project:x",
        ),
    ];
    for (field, mut body, object, name) in cases {
        body[object]["name"] = name.into();
        let (status, answer) = server.post_token(&body).await;
        assert_eq!(status, 400, "{object} name {name:?}: {answer}");
        assert_eq!(answer["error"], "invalid_request");
        assert_eq!(answer["field"], field, "{answer}");
    }
    // ...and a hand-forged token carrying it, signed by a key the issuer never published, is
    // refused by OpenBao.
    let mut injected = claims_of(token_of(&other_workspace));
    injected.terraform_project_name = injected_project.into();
    injected.sub =
        format!("organization:acme:project:{injected_project}:workspace:staging:run_phase:apply");
    injected.terraform_full_workspace =
        format!("organization:acme:project:{injected_project}:workspace:staging");
    assert_refused(
        bao.login(
            RUN_ROLE,
            &forge(&intruder, intruder.kid().as_str(), &injected),
        )
        .await,
        reasons::SIGNATURE,
        "an injected sub signed by an unpublished key",
    );
    // Why the API must refuse those names: signed by the issuer's real key, the same claims pass
    // the prod role, because OpenBao's glob lets `*` match across ':'.
    let signer = server
        .running
        .state
        .manager
        .snapshot()
        .signer
        .clone()
        .unwrap();
    assert_accepted(
        bao.login(
            RUN_ROLE,
            &tfe_oidc::token::sign(&signer, &injected).await.unwrap(),
        )
        .await,
        "(as documented: glob * matches ':') an injected sub signed by the issuer's key",
    );
    server.stop().await;
}

/// A token past its `exp` by more than OpenBao's 60 s leeway is refused as expired; the same
/// issuer's tokens log in once its clock is right again.
#[tokio::test(flavor = "multi_thread")]
async fn openbao_refuses_an_expired_token() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let now = unix_now();
    let clock = FakeClock::new(now - 3 * 3600);
    let server = TestServer::start(Options {
        tls: true,
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    wire(&bao, &server, &[]);
    let mut body = run_body("acme", "prod", "apply");
    body["ttl"] = "1h".into();
    let (status, old) = server.post_token(&body).await;
    assert_eq!(status, 200, "{old}");
    let exp = old["expires_at"].as_u64().unwrap();
    assert!(exp + 3600 <= now + 5, "exp {exp} is two hours ago");
    assert_refused(
        bao.login(RUN_ROLE, token_of(&old)).await,
        reasons::EXPIRED,
        "a token that expired two hours ago",
    );

    clock.set(unix_now());
    let fresh = server.post_token(&body).await.1;
    assert_eq!(kid_of(&fresh), kid_of(&old), "same key: only time differs");
    assert_accepted(bao.login(RUN_ROLE, token_of(&fresh)).await, "a fresh token");
    server.stop().await;
}

/// Per-phase roles (TFC_VAULT_PLAN_ROLE / TFC_VAULT_APPLY_ROLE): each accepts its phase only.
#[tokio::test(flavor = "multi_thread")]
async fn plan_and_apply_roles_accept_only_their_phase() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let server = TestServer::start(Options {
        tls: true,
        ..Default::default()
    })
    .await;
    // The plan role as configure.sh generates it, the apply role from the documented file.
    let out = wire(&bao, &server, &[("PHASE", "plan")]);
    assert!(
        out.contains("TFC_VAULT_PLAN_ROLE=tfe-acme-prod-plan"),
        "{out}"
    );
    let apply_file = deploy_vault().join("role-apply.json");
    let out = wire(
        &bao,
        &server,
        &[
            ("ROLE", "tfe-acme-prod-apply"),
            ("ROLE_FILE", apply_file.to_str().unwrap()),
        ],
    );
    assert!(
        out.contains("TFC_VAULT_RUN_ROLE=tfe-acme-prod-apply"),
        "{out}"
    );

    let (_, plan_role) = bao
        .call(
            reqwest::Method::GET,
            "auth/jwt/role/tfe-acme-prod-plan",
            Some("root"),
            None,
        )
        .await;
    let documented: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_vault().join("role-plan.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        plan_role["data"]["bound_claims"],
        documented["bound_claims"]
    );
    assert_eq!(
        documented["bound_claims"]["sub"],
        "organization:acme:project:*:workspace:prod:run_phase:plan"
    );

    let plan = server.mint("prod", "plan").await;
    let apply = server.mint("prod", "apply").await;
    assert_accepted(
        bao.login("tfe-acme-prod-plan", token_of(&plan)).await,
        "a plan token at the plan role",
    );
    assert_refused(
        bao.login("tfe-acme-prod-plan", token_of(&apply)).await,
        reasons::SUB_MISMATCH,
        "an apply token at the plan role",
    );
    assert_accepted(
        bao.login("tfe-acme-prod-apply", token_of(&apply)).await,
        "an apply token at the apply role",
    );
    assert_refused(
        bao.login("tfe-acme-prod-apply", token_of(&plan)).await,
        reasons::SUB_MISMATCH,
        "a plan token at the apply role",
    );
    server.stop().await;
}

/// Writes a role bound (glob) on `sub`, with the workspace's policy. The user claim is `sub`,
/// which every kind carries: OpenBao checks the user claim before the bound claims, so a claim
/// missing from another kind would otherwise be the reason for a refusal.
async fn bound_role(bao: &Bao, role: &str, sub: &str) {
    bao.root_write(
        &format!("auth/jwt/role/{role}"),
        json!({
            "role_type": "jwt",
            "bound_audiences": [VAULT_AUDIENCE],
            "bound_claims_type": "glob",
            "bound_claims": {"sub": sub},
            "user_claim": "sub",
            "token_policies": [POLICY],
            "token_ttl": "20m",
        }),
    )
    .await;
}

/// A role bound on a module-test `sub` accepts that module's test token and refuses a workspace
/// token, another module's test token and a Stacks token; a role bound on a Stacks `sub` accepts
/// its deployment's tokens and refuses the other kinds and another deployment; the documented
/// workspace role refuses both new kinds (they lack its user claim).
#[tokio::test(flavor = "multi_thread")]
async fn module_test_and_stacks_roles_accept_only_their_kind() {
    let Some((bao, server)) = bao_and_issuer(Options::default()).await else {
        return;
    };
    const MODULE_ROLE: &str = "tfe-acme-module-vpc";
    const STACK_ROLE: &str = "tfe-acme-stack-network-production";
    let module_sub = "organization:acme:module:vpc:operation:test_run";
    bound_role(&bao, MODULE_ROLE, module_sub).await;
    let stack_sub = "organization:acme:project:*:stack:network:deployment:production:operation:*";
    bound_role(&bao, STACK_ROLE, stack_sub).await;

    let workspace = server.mint("prod", "apply").await;
    let module = server.mint_body(&module_test_body("acme", "vpc")).await;
    let other_module = server.mint_body(&module_test_body("acme", "dns")).await;
    let plan = server.mint_body(&stack_body("production", "plan")).await;
    let apply = server.mint_body(&stack_body("production", "apply")).await;
    let staging = server.mint_body(&stack_body("staging", "apply")).await;
    assert_eq!(claims_sub(&module), module_sub);

    let auth = assert_accepted(
        bao.login(MODULE_ROLE, token_of(&module)).await,
        "the module's test token at its role",
    );
    assert_eq!(auth["metadata"]["role"], MODULE_ROLE);
    for (what, token) in [
        ("a workspace token", &workspace),
        ("another module's test token", &other_module),
        ("a Stacks token", &apply),
    ] {
        assert_refused(
            bao.login(MODULE_ROLE, token_of(token)).await,
            reasons::SUB_MISMATCH,
            &format!("{what} at the module-test role"),
        );
    }

    for (what, token) in [("a plan", &plan), ("an apply", &apply)] {
        let auth = assert_accepted(
            bao.login(STACK_ROLE, token_of(token)).await,
            &format!("{what} token of the deployment at its role"),
        );
        let me = bao
            .call(
                reqwest::Method::GET,
                "auth/token/lookup-self",
                auth["client_token"].as_str(),
                None,
            )
            .await
            .1;
        let name = me["data"]["display_name"].as_str().unwrap_or_default();
        assert!(name.contains(":deployment:production:"), "{me}");
    }
    for (what, token) in [
        ("a workspace token", &workspace),
        ("a module test token", &module),
        ("another deployment's token", &staging),
    ] {
        assert_refused(
            bao.login(STACK_ROLE, token_of(token)).await,
            reasons::SUB_MISMATCH,
            &format!("{what} at the Stacks role"),
        );
    }

    // The documented workspace role's user claim, terraform_full_workspace, exists only in
    // workspace tokens: OpenBao refuses the other kinds on it before it compares the sub.
    for (what, token) in [("a module test token", &module), ("a Stacks token", &apply)] {
        assert_refused(
            bao.login(RUN_ROLE, token_of(token)).await,
            "claim \"terraform_full_workspace\" not found in token",
            &format!("{what} at the workspace role"),
        );
    }
    // The glob's `*` would match ':' in a name, which the API therefore refuses to sign.
    let mut body = stack_body("staging:operation:apply:x", "apply");
    body["stack"]["name"] = "network:deployment:production".into();
    let (status, answer) = server.post_token(&body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "stack.name");
    server.stop().await;
}

fn claims_sub(minted: &Value) -> String {
    let payload = token_of(minted).split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    claims["sub"].as_str().unwrap().to_owned()
}

/// Keys rotate every 4 s while workers mint and log in without pause: no valid token is ever
/// refused, and a token minted before the first rotation keeps logging in until it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_never_fail_across_rotations_under_load() {
    const WORKERS: usize = 3;
    const MIN_ROTATIONS: u64 = 10;
    let Some(bao) = Bao::start().await else {
        return;
    };
    let server = TestServer::start(Options {
        tls: true,
        keys_toml: "rotation_period = \"4s\"".into(),
        discovery_toml: "jwks_max_age = \"1s\"".into(),
        extra_toml: "[tokens]\ndefault_ttl = \"5m\"\nmax_ttl = \"10m\"\n".into(),
        ..Default::default()
    })
    .await;
    wire(&bao, &server, &[]);
    let (bao, server) = (Arc::new(bao), Arc::new(server));
    let started = Instant::now();
    let start_rotations = rotations(&server).await;

    // A token minted now, before any rotation; OpenBao accepts it until exp + 60 s.
    let mut body = run_body("acme", "prod", "plan");
    body["ttl"] = "20s".into();
    let (status, early) = server.post_token(&body).await;
    assert_eq!(status, 200, "{early}");
    let early_exp = early["expires_at"].as_u64().unwrap();
    let early_kid = kid_of(&early);

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (bao, server, stop) = (Arc::clone(&bao), Arc::clone(&server), Arc::clone(&stop));
            tokio::spawn(async move {
                let (mut logins, mut refused, mut kids) = (0u64, Vec::new(), HashSet::new());
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let phase = if i % 2 == 0 { "plan" } else { "apply" };
                    i += 1;
                    let minted = server.mint("prod", phase).await;
                    kids.insert(kid_of(&minted));
                    match bao.login(RUN_ROLE, token_of(&minted)).await {
                        Ok(_) => logins += 1,
                        Err(e) => refused.push(format!("kid {}: {e}", kid_of(&minted))),
                    }
                }
                (logins, refused, kids)
            })
        })
        .collect();

    let mut early_ok_at = BTreeSet::new();
    let mut forced = false;
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let done = rotations(&server).await - start_rotations;
        if done > seen && unix_now() < early_exp {
            seen = done;
            assert_accepted(
                bao.login(RUN_ROLE, token_of(&early)).await,
                &format!("the early token after {done} rotations"),
            );
            early_ok_at.insert(done);
        }
        if !forced && done >= 6 {
            let (status, set) = keys_post(&server, "/v1/keys/rotate?force=true").await;
            assert_eq!(status, 200, "forced rotation: {set}");
            forced = true;
        }
        if done >= MIN_ROTATIONS && unix_now() > early_exp + 62 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "only {done} rotations in {:?}",
            started.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (mut logins, mut refused, mut kids) = (0, Vec::new(), HashSet::new());
    for worker in workers {
        let (l, r, k) = worker.await.unwrap();
        logins += l;
        refused.extend(r);
        kids.extend(k);
    }
    let total_rotations = rotations(&server).await - start_rotations;
    let fetches = jwks_fetches(&server).await;

    assert!(
        refused.is_empty(),
        "{} of {} valid tokens refused: {refused:#?}",
        refused.len(),
        logins + refused.len() as u64
    );
    assert!(total_rotations >= MIN_ROTATIONS);
    assert!(
        kids.len() as u64 >= MIN_ROTATIONS,
        "the workers' tokens were signed by only {} keys",
        kids.len()
    );
    assert!(logins >= 100, "only {logins} logins");
    assert!(
        early_ok_at.len() >= 3,
        "the early token logged in after rotations {early_ok_at:?} only"
    );
    // Expired now (exp + 60 s leeway passed) while its key is still published: refused for
    // its age, not for its key.
    assert!(published_kids(&server).await.contains(&early_kid));
    assert_refused(
        bao.login(RUN_ROLE, token_of(&early)).await,
        reasons::EXPIRED,
        "the early token after its expiry",
    );
    eprintln!(
        "rotation under load: {total_rotations} rotations (1 forced) in {:.1}s, {logins} logins by {WORKERS} workers with tokens of {} keys, 0 refused; OpenBao fetched the JWKS {fetches} times; the early token (exp +20s) logged in after rotations {early_ok_at:?} and was refused as expired after exp + 60s",
        started.elapsed().as_secs_f64(),
        kids.len(),
    );
    drop(bao);
    Arc::into_inner(server).unwrap().stop().await;
}

/// A revoked key disappears from the JWKS at once, but OpenBao keeps trusting it until it
/// refetches the JWKS. It refetches only when a token's kid is not in its cache (or a signature
/// fails), or when auth/jwt/config is rewritten. Because the next key is published a whole
/// rotation period before it signs, OpenBao usually has it cached already: then the new
/// current key's tokens do NOT trigger the refetch, and the revoked key stays trusted until
/// something else does.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_key_is_trusted_until_openbao_refetches_the_jwks() {
    let Some((bao, server)) = bao_and_issuer(Options::default()).await else {
        return;
    };
    let a = server.mint("prod", "apply").await;
    let k1 = kid_of(&a);
    let before = jwks_fetches(&server).await;
    assert_accepted(bao.login(RUN_ROLE, token_of(&a)).await, "a");
    let mut fetches = jwks_fetches(&server).await;
    assert_eq!(fetches, before + 1, "the first login fetched the JWKS");

    // Manual rotation: refused while the next key is younger than jwks_max_age, unless forced.
    let (status, refused) = keys_post(&server, "/v1/keys/rotate").await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"], "conflict");
    let (status, _) = keys_post(&server, "/v1/keys/rotate?force=true").await;
    assert_eq!(status, 200);
    let b = server.mint("prod", "apply").await;
    let k2 = kid_of(&b);
    assert_ne!(k1, k2);
    assert_accepted(bao.login(RUN_ROLE, token_of(&b)).await, "b");
    assert_eq!(
        jwks_fetches(&server).await,
        fetches,
        "k2 was published as the next key when OpenBao fetched: no refetch"
    );
    assert_accepted(
        bao.login(RUN_ROLE, token_of(&a)).await,
        "a (k1 retired, still published)",
    );

    // Case 1: revoke the current key k2. k3, made by the forced rotation after OpenBao's only
    // fetch, takes over: its first token is an unknown kid and makes OpenBao refetch.
    let (status, revoked) = keys_post(&server, &format!("/v1/keys/{k2}/revoke")).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked"], k2.as_str());
    assert!(revoked["note"].as_str().unwrap().contains("refetch"));
    assert!(!published_kids(&server).await.contains(&k2));
    assert_accepted(
        bao.login(RUN_ROLE, token_of(&b)).await,
        "b right after k2's revocation (cached)",
    );
    assert_eq!(jwks_fetches(&server).await, fetches);
    let c = server.mint("prod", "apply").await;
    let k3 = kid_of(&c);
    assert_accepted(bao.login(RUN_ROLE, token_of(&c)).await, "c (k3)");
    fetches += 1;
    assert_eq!(
        jwks_fetches(&server).await,
        fetches,
        "k3 was unknown to OpenBao: refetch"
    );
    assert_refused(
        bao.login(RUN_ROLE, token_of(&b)).await,
        reasons::SIGNATURE,
        "b after OpenBao refetched",
    );
    fetches += 1; // a kid missing from the cache always triggers another fetch

    // Case 2: OpenBao's last fetch had k4 as the next key. Revoke the current key k3: k4 takes
    // over, its tokens verify from the cache, and the revoked k3 STAYS trusted.
    let (status, _) = keys_post(&server, &format!("/v1/keys/{k3}/revoke")).await;
    assert_eq!(status, 200);
    let d = server.mint("prod", "apply").await;
    let k4 = kid_of(&d);
    assert_accepted(bao.login(RUN_ROLE, token_of(&d)).await, "d (k4)");
    assert_eq!(
        jwks_fetches(&server).await,
        fetches,
        "k4 was cached as the next key: no refetch"
    );
    assert_accepted(
        bao.login(RUN_ROLE, token_of(&c)).await,
        "c (k3 revoked, but still cached) even after the promoted key signed",
    );
    // Any token with a kid OpenBao does not know triggers the refetch, even one that is not
    // signed at all: the probe of README.md. After it, k3 is refused.
    let probe = format!(
        "{}.e30.AA",
        B64.encode(r#"{"alg":"RS256","kid":"jwks-refresh-probe"}"#)
    );
    let readme = std::fs::read_to_string(deploy_vault().join("README.md")).unwrap();
    assert!(
        readme.contains(&probe),
        "README.md documents the probe {probe}"
    );
    assert_refused(
        bao.login(RUN_ROLE, &probe).await,
        reasons::SIGNATURE,
        "the unknown-kid probe",
    );
    fetches += 1;
    assert_eq!(jwks_fetches(&server).await, fetches);
    assert_refused(
        bao.login(RUN_ROLE, token_of(&c)).await,
        reasons::SIGNATURE,
        "c after the probe's refetch",
    );

    // Case 3: rewriting auth/jwt/config (running configure.sh again) drops the cache too.
    let (status, _) = keys_post(&server, &format!("/v1/keys/{k4}/revoke")).await;
    assert_eq!(status, 200);
    assert_accepted(
        bao.login(RUN_ROLE, token_of(&d)).await,
        "d (k4 revoked, still cached)",
    );
    wire(&bao, &server, &[]);
    assert_refused(
        bao.login(RUN_ROLE, token_of(&d)).await,
        reasons::SIGNATURE,
        "d after the config rewrite",
    );
    let e = server.mint("prod", "apply").await;
    assert_accepted(bao.login(RUN_ROLE, token_of(&e)).await, "e (k5)");
    assert_accepted(
        bao.login(RUN_ROLE, token_of(&a)).await,
        "a (k1 retired, never revoked)",
    );
    server.stop().await;
}

/// The issuer stops and starts again on the same key directory, ports and issuer: OpenBao keeps
/// verifying cached keys while it is down, and old and new tokens log in after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_keep_logging_in_across_an_issuer_restart() {
    let Some((bao, server)) = bao_and_issuer(Options::default()).await else {
        return;
    };
    let before = server.mint("prod", "apply").await;
    assert_accepted(
        bao.login(RUN_ROLE, token_of(&before)).await,
        "a token before the restart",
    );
    let issuer = server.issuer().to_owned();
    let kids = published_kids(&server).await;

    let stopped = server.pause().await;
    assert_accepted(
        bao.login(RUN_ROLE, token_of(&before)).await,
        "a cached key's token while the issuer is down",
    );
    let probe = unpublished_key();
    let refused = bao
        .login(
            RUN_ROLE,
            &forge(&probe, probe.kid().as_str(), &claims_of(token_of(&before))),
        )
        .await
        .unwrap_err();
    assert!(
        refused.contains("get keys failed") && refused.contains("connection refused"),
        "an unknown kid while the issuer is down: {refused}"
    );

    let server = stopped.start().await;
    assert_eq!(server.issuer(), issuer);
    assert_eq!(published_kids(&server).await, kids, "same key set");
    assert_accepted(
        bao.login(RUN_ROLE, token_of(&before)).await,
        "a token from before the restart",
    );
    let after = server.mint("prod", "plan").await;
    assert_eq!(kid_of(&after), kid_of(&before), "the current key survived");
    assert_accepted(
        bao.login(RUN_ROLE, token_of(&after)).await,
        "a token after the restart",
    );
    // Two forced rotations make a key created after the restart current: its first token
    // makes OpenBao fetch the JWKS from the restarted issuer, and both generations verify.
    for _ in 0..2 {
        let (status, _) = keys_post(&server, "/v1/keys/rotate?force=true").await;
        assert_eq!(status, 200);
    }
    let rotated = server.mint("prod", "apply").await;
    assert!(
        !kids.contains(&kid_of(&rotated)),
        "a key made after the restart"
    );
    let fetches = jwks_fetches(&server).await;
    assert_accepted(
        bao.login(RUN_ROLE, token_of(&rotated)).await,
        "a token of a key made after the restart",
    );
    assert_eq!(jwks_fetches(&server).await, fetches + 1, "one refetch");
    assert_accepted(
        bao.login(RUN_ROLE, token_of(&before)).await,
        "the pre-restart token after OpenBao refetched",
    );
    server.stop().await;
}

/// `configure.sh` refuses, before touching Vault, names that would widen the role's glob or
/// break its JSON, and an issuer Vault would never match.
#[test]
fn configure_sh_refuses_names_that_would_widen_the_role() {
    let cases = [
        ("ORG", "acme:project:x"),
        ("WORKSPACE", "pro*"),
        ("WORKSPACE", "prod\",\"x"),
        ("PROJECT", "x:workspace:prod"),
        ("PHASE", "destroy"),
        ("ISSUER", "https://tfe-oidc.internal:8443/"),
    ];
    for (key, value) in cases {
        let output = std::process::Command::new("bash")
            .arg(deploy_vault().join("configure.sh"))
            .env("VAULT_CLI", "false")
            .env("ISSUER", "https://tfe-oidc.internal:8443")
            .env("ORG", "acme")
            .env("WORKSPACE", "prod")
            .env(key, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{key}={value}: {stderr}");
        assert!(stderr.contains(key), "{key}={value}: {stderr}");
    }
}
