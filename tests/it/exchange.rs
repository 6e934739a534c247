//! The credential exchange (`POST /v1/credentials`, `POST /v1/credentials/revoke`) against a
//! real OpenBao 2.7.2 whose JWT auth is wired to this issuer by `deploy/vault/configure.sh`.
//!
//! OpenBao has no AWS, GCP or Azure secrets engine. These tests mount stand-in engines instead:
//! KV version 1 mounts at `aws/`, `gcp/` and `azure/`, holding, at exactly the paths the real
//! engines serve (`aws/creds/<role>`, `aws/sts/<role>`, `gcp/roleset/<name>/token`,
//! `gcp/static-account/<name>/key`, `azure/creds/<role>`), `data` shaped like the real engines'
//! answers (`access_key`, `secret_key`, `security_token`/`session_token`; `token`,
//! `expires_at_seconds`; `private_key_data`; `client_id`, `client_secret`). KV v1 ignores query
//! parameters such as `role_arn` (OpenBao answers a warning). The JWT login, the policies, the
//! namespaces, TLS and token revocation are all real.
//!
//! The silent Vault is a plain TCP listener that accepts and never answers: a real Vault cannot
//! be made to do that on purpose.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tempfile::TempDir;

use common::bao::{Bao, deploy_vault, reasons};
use common::{Options, Secrets, TestServer, mount_engines, run_body, start_server, unix_now, wire};
use tfe_oidc::vault::{Endpoint, VaultClients, VaultToken};

/// Every log line the services of this test binary wrote.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends every log event (debug and up, every crate) to `LOGS`.
fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    });
}

/// An OpenBao wired to a tfe-oidc that may call it, with stand-in engines.
struct Fixture {
    bao: Bao,
    server: TestServer,
    audit: PathBuf,
    secrets: Secrets,
    _files: TempDir,
}

async fn fixture(tls: bool) -> Option<Fixture> {
    let bao = if tls {
        Bao::start_tls().await?
    } else {
        Bao::start().await?
    };
    let addr = bao.addr.clone();
    Some(wired(bao, &[&addr], "").await)
}

/// `bao` wired to a new tfe-oidc that may call `allowed`, with `api_toml` in its `[api]`.
async fn wired(bao: Bao, allowed: &[&str], api_toml: &str) -> Fixture {
    capture_logs();
    let files = tempfile::tempdir().unwrap();
    let audit = files.path().join("audit.jsonl");
    let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    let server = TestServer::start(Options {
        tls: true,
        extra_toml: format!(
            "[exchange]\nallowed_vault_addrs = [{}]\nvault_timeout = \"10s\"\n[audit]\npath = {audit:?}\n",
            allowed.join(", ")
        ),
        api_toml: api_toml.to_owned(),
        ..Options::default()
    })
    .await;
    // The documented policy: it grants the engine paths the stand-ins serve, not azure/creds/denied.
    let policy = deploy_vault().join("policy.hcl");
    let policy = policy.to_str().unwrap().to_owned();
    for (workspace, phase) in [
        ("prod", "*"),
        ("prod", "plan"),
        ("prod", "apply"),
        ("other", "*"),
    ] {
        wire(&bao, &server, &policy, workspace, phase, &[]);
    }
    let secrets = Secrets::new();
    mount_engines(&bao, &secrets, None).await;
    Fixture {
        bao,
        server,
        audit,
        secrets,
        _files: files,
    }
}

/// `POST <path>` on the API with `token`: status and JSON body.
async fn post(server: &TestServer, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let response = server
        .client()
        .post(server.api_url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if status == 200 && path == "/v1/credentials" {
        let cache = response.headers().get("cache-control");
        assert_eq!(
            cache.and_then(|v| v.to_str().ok()),
            Some("no-store"),
            "credentials must not be cached"
        );
    }
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn exchange(server: &TestServer, phase: &str, variables: &[(&str, &str)]) -> (u16, Value) {
    let variables: BTreeMap<&str, &str> = variables.iter().copied().collect();
    let body = json!({"run": run_body("acme", "prod", phase), "variables": variables});
    post(server, "/v1/credentials", &server.tokens.all, &body).await
}

async fn revoke(server: &TestServer, vault: &Value) -> (u16, Value) {
    post(server, "/v1/credentials/revoke", &server.tokens.all, vault).await
}

async fn metrics(server: &TestServer) -> String {
    let url = server.api_url("/metrics");
    server
        .client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn audit_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The default Vault configuration's variables for `addr`, with `extra` added.
fn vault_vars<'a>(addr: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut vars = vec![
        ("TFC_VAULT_PROVIDER_AUTH", "true"),
        ("TFC_VAULT_ADDR", addr),
        ("TFC_VAULT_RUN_ROLE", "tfe-acme-prod"),
    ];
    vars.extend_from_slice(extra);
    vars
}

/// `GET auth/token/lookup-self` with `token` (in `namespace`): the status.
async fn lookup_status(bao: &Bao, token: &str, namespace: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .get(format!("{}/v1/auth/token/lookup-self", bao.addr))
        .header("X-Vault-Token", token);
    if let Some(ns) = namespace {
        request = request.header("X-Vault-Namespace", ns);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Default configuration plus a tagged one that takes its address and role from the
/// `TFC_DEFAULT_` forms; every engine shape; one token minted and audited per configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_and_tagged_configurations_get_every_engine() {
    let Some(f) = fixture(false).await else {
        return;
    };
    let addr = f.bao.addr.clone();
    let before = unix_now();
    let vars = vec![
        ("TFC_VAULT_PROVIDER_AUTH", "true"),
        ("TFC_VAULT_PROVIDER_AUTH_TEAM_B", "true"),
        ("TFC_DEFAULT_VAULT_ADDR", addr.as_str()),
        ("TFC_DEFAULT_VAULT_RUN_ROLE", "tfe-acme-prod"),
        ("TFC_VAULT_BACKED_AWS_AUTH", "true"),
        ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "iam_user"),
        ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "deploy"),
        ("TFC_VAULT_BACKED_AWS_AUTH_STS", "true"),
        ("TFC_VAULT_BACKED_AWS_AUTH_TYPE_STS", "assumed_role"),
        ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE_STS", "deploy"),
        (
            "TFC_VAULT_BACKED_AWS_RUN_ROLE_ARN_STS",
            "arn:aws:iam::123456789012:role/deploy",
        ),
        ("TFC_VAULT_BACKED_AWS_VAULT_CONFIG_STS", "TEAM_B"),
        ("TFC_VAULT_BACKED_AWS_SLEEP_SECONDS_STS", "30"),
        ("TFC_VAULT_BACKED_GCP_AUTH", "true"),
        ("TFC_VAULT_BACKED_GCP_AUTH_TYPE", "roleset/access_token"),
        ("TFC_VAULT_BACKED_GCP_RUN_VAULT_ROLESET", "viewer"),
        ("TFC_VAULT_BACKED_GCP_AUTH_KEY", "true"),
        (
            "TFC_VAULT_BACKED_GCP_AUTH_TYPE_KEY",
            "static_account/service_account_key",
        ),
        (
            "TFC_VAULT_BACKED_GCP_RUN_VAULT_STATIC_ACCOUNT_KEY",
            "deployer",
        ),
        ("TFC_VAULT_BACKED_AZURE_AUTH", "true"),
        ("TFC_VAULT_BACKED_AZURE_RUN_VAULT_ROLE", "contributor"),
        ("UNRELATED_VARIABLE", "ignored"),
    ];
    let (status, body) = exchange(&f.server, "apply", &vars).await;
    assert_eq!(status, 200, "{body}");

    let vault = &body["vault"];
    let default = &vault["default"];
    let team_b = &vault["aliases"]["TEAM_B"];
    assert_eq!(default["address"], addr.as_str());
    assert_eq!(team_b["address"], addr.as_str());
    assert_ne!(
        default["token"], team_b["token"],
        "each configuration logs in on its own"
    );
    assert!(
        default["policies"]
            .as_array()
            .unwrap()
            .contains(&json!("tfe-acme-prod"))
    );
    assert_eq!(
        (
            default["lease_duration"].as_u64(),
            default["renewable"].as_bool()
        ),
        (Some(1200), Some(true))
    );
    for token in [&default["token"], &team_b["token"]] {
        assert_eq!(
            lookup_status(&f.bao, token.as_str().unwrap(), None).await,
            200
        );
    }

    let s = &f.secrets;
    assert_eq!(
        body["aws"]["default"],
        json!({"access_key_id": "AKIAIAMUSER", "secret_access_key": s.iam_secret, "session_token": null, "lease_id": "", "lease_duration": 2764800})
    );
    assert_eq!(
        body["aws"]["aliases"]["STS"]["session_token"],
        s.session_token.as_str()
    );
    assert_eq!(
        body["gcp"]["default"],
        json!({"access_token": s.gcp_token, "expires_at": 1764115230u64})
    );
    let credentials: Value = serde_json::from_str(
        body["gcp"]["aliases"]["KEY"]["credentials"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(credentials["private_key"], s.gcp_private_key.as_str());
    assert_eq!(
        body["azure"]["default"]["client_secret"],
        s.azure_secret.as_str()
    );
    assert_eq!(body["azure"]["aliases"], json!({}));

    let env = &body["env"];
    assert_eq!(env["VAULT_ADDR"], addr.as_str());
    assert_eq!(env["VAULT_TOKEN"], default["token"]);
    assert_eq!(
        env["AWS_SECRET_ACCESS_KEY"],
        s.iam_secret.as_str(),
        "env holds the default configurations only"
    );
    assert_eq!(env["GOOGLE_OAUTH_ACCESS_TOKEN"], s.gcp_token.as_str());
    assert_eq!(env["ARM_CLIENT_SECRET"], s.azure_secret.as_str());
    assert!(
        env.get("AWS_SESSION_TOKEN").is_none() && env.get("VAULT_NAMESPACE").is_none(),
        "{env}"
    );
    let not_before = body["not_before"].as_u64().unwrap();
    assert!(
        (before + 30..=unix_now() + 30).contains(&not_before),
        "SLEEP_SECONDS is not slept: {not_before}"
    );

    let audit = audit_lines(&f.audit);
    assert_eq!(
        audit.len(),
        2,
        "one token per Vault configuration: {audit:?}"
    );
    for line in &audit {
        assert_eq!(
            (line["caller"].as_str(), line["aud"].as_str()),
            (Some("tfe"), Some("vault.workload.identity"))
        );
        assert!(line["sub"].as_str().unwrap().ends_with(":run_phase:apply"));
    }
    let text = metrics(&f.server).await;
    for line in [
        "tfe_oidc_vault_requests_total{step=\"vault_login\",outcome=\"ok\"} 2",
        "tfe_oidc_vault_requests_total{step=\"aws\",outcome=\"ok\"} 2",
        "tfe_oidc_vault_requests_total{step=\"gcp\",outcome=\"ok\"} 2",
        "tfe_oidc_vault_requests_total{step=\"azure\",outcome=\"ok\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }

    let (status, done) = revoke(&f.server, vault).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        done,
        json!({"revoked": {"default": "revoked", "TEAM_B": "revoked"}})
    );
    let tokens = [
        default["token"].as_str().unwrap(),
        team_b["token"].as_str().unwrap(),
    ];
    assert_no_secret_logged(
        &[s.all(), tokens.to_vec(), vec![f.server.tokens.all.as_str()]].concat(),
    );
}

/// No secret the tests used is in any log line of this test binary's services, and no JWT is.
fn assert_no_secret_logged(secrets: &[&str]) {
    let logs = String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned();
    assert!(
        logs.contains("credential exchange done"),
        "the logs were not captured"
    );
    for secret in secrets {
        assert!(!logs.contains(secret), "a secret is in the logs: {secret}");
    }
    assert!(
        !logs.contains("eyJ"),
        "a JWT (or other base64 JSON) is in the logs"
    );
}

/// `TFC_VAULT_PLAN_ROLE` / `TFC_VAULT_APPLY_ROLE` are chosen by the run's phase, and the token
/// carries that phase: the plan role refuses an apply token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_apply_runs_log_in_with_their_roles() {
    let Some(f) = fixture(false).await else {
        return;
    };
    let addr = f.bao.addr.clone();
    let vars = [
        ("TFC_VAULT_PROVIDER_AUTH", "true"),
        ("TFC_VAULT_ADDR", addr.as_str()),
        ("TFC_VAULT_PLAN_ROLE", "tfe-acme-prod-plan"),
        ("TFC_VAULT_APPLY_ROLE", "tfe-acme-prod-apply"),
    ];
    for phase in ["plan", "apply"] {
        let (status, body) = exchange(&f.server, phase, &vars).await;
        assert_eq!(status, 200, "{body}");
        let policies = &body["vault"]["default"]["policies"];
        assert!(
            policies
                .as_array()
                .unwrap()
                .contains(&json!(format!("tfe-acme-prod-{phase}"))),
            "{phase}: {policies}"
        );
    }
    let wrong = [
        ("TFC_VAULT_APPLY_ROLE", "tfe-acme-prod-plan"),
        ("TFC_VAULT_PLAN_ROLE", "x"),
    ];
    let (status, body) = exchange(&f.server, "apply", &vault_vars(&addr, &wrong)).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("vault_login failed for configuration default"),
        "{body}"
    );
}

/// Manual audiences: `TFC_WORKLOAD_IDENTITY_AUDIENCE[_<TAG>]` come back as
/// `TFC_WORKLOAD_IDENTITY_TOKEN[_<TAG>]` in `env`, each a token of the run's phase for that
/// audience, audited; an audience outside the token policy is a 400 naming its variable, before
/// anything is minted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_audiences_come_back_as_workload_identity_tokens() {
    let Some(f) = fixture(false).await else {
        return;
    };
    let addr = f.bao.addr.clone();
    let vars = vault_vars(
        &addr,
        &[
            ("TFC_WORKLOAD_IDENTITY_AUDIENCE", "aws.workload.identity"),
            (
                "TFC_WORKLOAD_IDENTITY_AUDIENCE_AZ",
                "api://AzureADTokenExchange",
            ),
        ],
    );
    let (status, body) = exchange(&f.server, "plan", &vars).await;
    assert_eq!(status, 200, "{body}");
    let jwks = f.server.jwks().await;
    for (variable, audience) in [
        ("TFC_WORKLOAD_IDENTITY_TOKEN", "aws.workload.identity"),
        (
            "TFC_WORKLOAD_IDENTITY_TOKEN_AZ",
            "api://AzureADTokenExchange",
        ),
    ] {
        let token = body["env"][variable].as_str().unwrap();
        let claims = verify(token, &jwks, audience);
        assert_eq!(claims["terraform_run_phase"], "plan");
        assert_eq!(claims["terraform_workspace_name"], "prod");
    }
    let audiences: Vec<Value> = audit_lines(&f.audit)
        .iter()
        .map(|l| l["aud"].clone())
        .collect();
    assert_eq!(
        audiences,
        [
            json!("aws.workload.identity"),
            json!("api://AzureADTokenExchange"),
            json!("vault.workload.identity")
        ],
        "every token audited"
    );
    revoke(&f.server, &body["vault"]).await;

    let refused = vault_vars(
        &addr,
        &[("TFC_WORKLOAD_IDENTITY_AUDIENCE_X", "not.allowed")],
    );
    let (status, body) = exchange(&f.server, "plan", &refused).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "variables.TFC_WORKLOAD_IDENTITY_AUDIENCE_X");
    assert_eq!(audit_lines(&f.audit).len(), 3, "nothing minted: {body}");
}

/// Checks `token`'s RS256 signature against `jwks` and its audience; its claims.
fn verify(token: &str, jwks: &Value, audience: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"].as_str() == header.kid.as_deref())
        .unwrap();
    let key = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().unwrap(),
        jwk["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[audience]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims
}

/// `TFC_VAULT_NAMESPACE` logs in to the JWT auth of that namespace (OpenBao 2.7.2's dev server
/// has namespaces) and reads its engines; the token is valid there only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_is_logged_into_and_read() {
    let Some(f) = fixture(false).await else {
        return;
    };
    f.bao.root_write("sys/namespaces/team", json!({})).await;
    let policy = deploy_vault().join("policy.hcl");
    wire(
        &f.bao,
        &f.server,
        policy.to_str().unwrap(),
        "prod",
        "*",
        &[("VAULT_NAMESPACE", "team"), ("BAO_NAMESPACE", "team")],
    );
    let secrets = Secrets::new();
    mount_engines(&f.bao, &secrets, Some("team")).await;
    let addr = f.bao.addr.clone();
    let vars = vault_vars(
        &addr,
        &[
            ("TFC_VAULT_NAMESPACE", "team"),
            ("TFC_VAULT_BACKED_AWS_AUTH", "true"),
            ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "federation_token"),
            ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "deploy"),
        ],
    );
    let (status, body) = exchange(&f.server, "plan", &vars).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["vault"]["default"]["namespace"], "team");
    assert_eq!(body["env"]["VAULT_NAMESPACE"], "team");
    assert_eq!(
        body["aws"]["default"]["secret_access_key"],
        secrets.sts_secret.as_str(),
        "read in the namespace, not the root"
    );
    let token = body["vault"]["default"]["token"].as_str().unwrap();
    assert_eq!(lookup_status(&f.bao, token, Some("team")).await, 200);
    let (status, done) = revoke(&f.server, &body["vault"]).await;
    assert_eq!(
        (status, &done["revoked"]["default"]),
        (200, &json!("revoked")),
        "{done}"
    );
    assert_eq!(lookup_status(&f.bao, token, Some("team")).await, 403);
    assert_no_secret_logged(&[secrets.all(), vec![token]].concat());
}

/// A Vault behind TLS with a private CA: trusted through `TFC_VAULT_ENCODED_CACERT`, refused
/// (502 at login, the TLS error named) without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_behind_tls_is_trusted_through_encoded_cacert() {
    let Some(f) = fixture(true).await else { return };
    let addr = f.bao.addr.clone();
    assert!(addr.starts_with("https://"));
    let encoded = STANDARD.encode(f.bao.ca_pem.as_ref().unwrap());
    let (status, body) = exchange(&f.server, "plan", &vault_vars(&addr, &[])).await;
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("vault_login failed for configuration default: cannot reach vault"),
        "{message}"
    );
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    let (status, body) = exchange(
        &f.server,
        "plan",
        &vault_vars(&addr, &[("TFC_VAULT_ENCODED_CACERT", encoded.as_str())]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let vault = &body["vault"];
    assert!(
        vault["default"]["ca_cert"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let (status, done) = revoke(&f.server, vault).await;
    assert_eq!(
        (status, &done["revoked"]["default"]),
        (200, &json!("revoked")),
        "{done}"
    );
}

/// A policy without the engine path: 502 naming the step, the configuration and Vault's text;
/// the Vault token obtained before is revoked rather than left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_read_the_policy_denies_is_a_502_naming_the_step() {
    let Some(f) = fixture(false).await else {
        return;
    };
    let addr = f.bao.addr.clone();
    let vars = vault_vars(
        &addr,
        &[
            ("TFC_VAULT_BACKED_AZURE_AUTH_DENIED", "true"),
            ("TFC_VAULT_BACKED_AZURE_RUN_VAULT_ROLE_DENIED", "denied"),
        ],
    );
    let (status, body) = exchange(&f.server, "plan", &vars).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream");
    assert_eq!(
        body["message"],
        "azure failed for configuration DENIED: vault answered 403: permission denied"
    );
    let text = metrics(&f.server).await;
    assert!(
        text.contains("tfe_oidc_vault_requests_total{step=\"azure\",outcome=\"error\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tfe_oidc_vault_requests_total{step=\"revoke\",outcome=\"ok\"} 1"),
        "{text}"
    );
}

/// A role whose bound claims name another workspace: 502 naming `vault_login`, with Vault's
/// own reason; the token of the other configuration, which did log in, is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_claims_that_refuse_the_workspace_are_a_502_naming_vault_login() {
    let Some(f) = fixture(false).await else {
        return;
    };
    let addr = f.bao.addr.clone();
    let (status, body) = exchange(
        &f.server,
        "plan",
        &vault_vars(
            &addr,
            &[
                ("TFC_VAULT_RUN_ROLE", "tfe-acme-other"),
                ("TFC_VAULT_PROVIDER_AUTH_OK", "true"),
                ("TFC_VAULT_ADDR_OK", addr.as_str()),
                ("TFC_VAULT_RUN_ROLE_OK", "tfe-acme-prod"),
            ],
        ),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    let expected = format!(
        "vault_login failed for configuration default: vault answered 400: {}",
        reasons::SUB_MISMATCH
    );
    assert_eq!(body["message"], expected.as_str());
    let text = metrics(&f.server).await;
    for line in [
        "tfe_oidc_vault_requests_total{step=\"vault_login\",outcome=\"error\"} 1",
        "tfe_oidc_vault_requests_total{step=\"vault_login\",outcome=\"ok\"} 1",
        "tfe_oidc_vault_requests_total{step=\"revoke\",outcome=\"ok\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

/// A Vault that accepts the connection and never answers: 502 within `TFC_VAULT_CLIENT_TIMEOUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_vault_is_a_502_within_client_timeout() {
    capture_logs();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", silent.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in silent.incoming().take(2) {
            open.push(stream);
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    let files = tempfile::tempdir().unwrap();
    let server = start_server(&[&addr], &files.path().join("audit.jsonl"), "60s").await;
    let started = Instant::now();
    let (status, body) = exchange(
        &server,
        "plan",
        &vault_vars(&addr, &[("TFC_VAULT_CLIENT_TIMEOUT", "2")]),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        body["message"],
        "vault_login failed for configuration default: vault did not answer within 2s"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        metrics(&server)
            .await
            .contains("tfe_oidc_vault_requests_total{step=\"vault_login\",outcome=\"timeout\"} 1")
    );
    drop(held);
}

/// An address outside `exchange.allowed_vault_addrs` is a 403 before any token is minted; a
/// caller without the `credentials` scope is a 403 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_not_allowed_is_a_403_and_mints_nothing() {
    capture_logs();
    let files = tempfile::tempdir().unwrap();
    let audit = files.path().join("audit.jsonl");
    let server = start_server(&["https://vault.internal:8200"], &audit, "60s").await;
    let vars = vault_vars(
        "http://127.0.0.1:9",
        &[
            ("TFC_VAULT_PROVIDER_AUTH_OK", "true"),
            ("TFC_VAULT_ADDR_OK", "https://vault.internal:8200/"),
            ("TFC_VAULT_RUN_ROLE_OK", "r"),
        ],
    );
    let (status, body) = exchange(&server, "plan", &vars).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("TFC_VAULT_ADDR: \"http://127.0.0.1:9\" is not an allowed Vault address"),
        "{body}"
    );
    assert!(audit_lines(&audit).is_empty(), "a token was minted");
    let text = metrics(&server).await;
    assert!(
        text.contains("tfe_oidc_tokens_issued_total{phase=\"plan\"} 0"),
        "{text}"
    );
    assert!(!text.contains("step=\"vault_login\""), "{text}");

    let body = json!({"run": run_body("acme", "prod", "plan"), "variables": {}});
    let (status, _) = post(
        &server,
        "/v1/credentials",
        &server.tokens.tokens_only,
        &body,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = post(
        &server,
        "/v1/credentials/revoke",
        &server.tokens.tokens_only,
        &json!({}),
    )
    .await;
    assert_eq!(status, 403);
}

/// Malformed variable sets: each a 400 whose `field` is `variables.<the variable at fault>`,
/// and no token minted for any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_variable_sets_are_400_naming_the_variable() {
    capture_logs();
    let files = tempfile::tempdir().unwrap();
    let audit = files.path().join("audit.jsonl");
    let addr = "https://vault.internal:8200";
    let server = start_server(&[addr], &audit, "60s").await;
    let aws = [
        ("TFC_VAULT_BACKED_AWS_AUTH", "true"),
        ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "iam_user"),
        ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "r"),
    ];
    let gcp = [
        ("TFC_VAULT_BACKED_GCP_AUTH", "true"),
        ("TFC_VAULT_BACKED_GCP_AUTH_TYPE", "roleset/access_token"),
    ];
    let azure = [
        ("TFC_VAULT_BACKED_AZURE_AUTH", "true"),
        ("TFC_VAULT_BACKED_AZURE_RUN_VAULT_ROLE", "r"),
    ];
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![], "TFC_VAULT_PROVIDER_AUTH"),
        (
            vault_vars(addr, &[("TFC_VAULT_PROVIDER_AUTH", "1")]),
            "TFC_VAULT_PROVIDER_AUTH",
        ),
        (
            vault_vars(addr, &[("TFC_DEFAULT_VAULT_PROVIDER_AUTH", "true")]),
            "TFC_DEFAULT_VAULT_PROVIDER_AUTH",
        ),
        (
            vault_vars(addr, &[("TFC_VAULT_PROVIDER_AUTH_TYPE", "true")]),
            "TFC_VAULT_PROVIDER_AUTH_TYPE",
        ),
        (
            vault_vars(addr, &[("TFC_VAULT_PROVIDER_AUTH_a.b", "true")]),
            "TFC_VAULT_PROVIDER_AUTH_a.b",
        ),
        (
            vec![
                ("TFC_VAULT_PROVIDER_AUTH", "true"),
                ("TFC_VAULT_RUN_ROLE", "r"),
            ],
            "TFC_VAULT_ADDR",
        ),
        (
            vec![
                ("TFC_VAULT_PROVIDER_AUTH", "true"),
                ("TFC_VAULT_ADDR", addr),
            ],
            "TFC_VAULT_RUN_ROLE",
        ),
        (
            vec![
                ("TFC_VAULT_PROVIDER_AUTH", "true"),
                ("TFC_VAULT_ADDR", "https://vault.internal:8200/v1"),
                ("TFC_VAULT_RUN_ROLE", "r"),
            ],
            "TFC_VAULT_ADDR",
        ),
        (
            vault_vars(addr, &[("TFC_VAULT_RUN_ROLE", "../sys")]),
            "TFC_VAULT_RUN_ROLE",
        ),
        (
            vault_vars(addr, &[("TFC_VAULT_AUTH_PATH", "jwt/")]),
            "TFC_VAULT_AUTH_PATH",
        ),
        (
            vault_vars(addr, &[("TFC_VAULT_NAMESPACE", "a b")]),
            "TFC_VAULT_NAMESPACE",
        ),
        (
            vault_vars(addr, &[("TFC_VAULT_CLIENT_TIMEOUT", "601")]),
            "TFC_VAULT_CLIENT_TIMEOUT",
        ),
        (
            vault_vars(addr, &[("TFC_VAULT_ENCODED_CACERT", "bm90IGEgY2VydA==")]),
            "TFC_VAULT_ENCODED_CACERT",
        ),
        (
            vault_vars(
                addr,
                &[(
                    "TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE",
                    "not-allowed.example",
                )],
            ),
            "TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE",
        ),
        (
            vault_vars(
                addr,
                &[("TFC_DEFAULT_VAULT_WORKLOAD_IDENTITY_AUDIENCE", "")],
            ),
            "TFC_DEFAULT_VAULT_WORKLOAD_IDENTITY_AUDIENCE",
        ),
        (
            vault_vars(addr, &[aws[0], aws[2]]),
            "TFC_VAULT_BACKED_AWS_AUTH_TYPE",
        ),
        (
            vault_vars(
                addr,
                &[
                    aws[0],
                    ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "session"),
                    aws[2],
                ],
            ),
            "TFC_VAULT_BACKED_AWS_AUTH_TYPE",
        ),
        (
            vault_vars(addr, &[aws[0], aws[1]]),
            "TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE",
        ),
        (
            vault_vars(
                addr,
                &[
                    aws[0],
                    aws[1],
                    aws[2],
                    ("TFC_VAULT_BACKED_AWS_SLEEP_SECONDS", "1501"),
                ],
            ),
            "TFC_VAULT_BACKED_AWS_SLEEP_SECONDS",
        ),
        (
            vault_vars(
                addr,
                &[
                    aws[0],
                    ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "assumed_role"),
                    aws[2],
                    ("TFC_VAULT_BACKED_AWS_PLAN_ROLE_ARN", "deploy"),
                ],
            ),
            "TFC_VAULT_BACKED_AWS_PLAN_ROLE_ARN",
        ),
        (
            vault_vars(
                addr,
                &[
                    aws[0],
                    aws[1],
                    aws[2],
                    ("TFC_VAULT_BACKED_AWS_VAULT_CONFIG", "MISSING"),
                ],
            ),
            "TFC_VAULT_BACKED_AWS_VAULT_CONFIG",
        ),
        (
            vault_vars(
                addr,
                &[
                    aws[0],
                    aws[1],
                    aws[2],
                    ("TFC_VAULT_BACKED_AWS_MOUNT_PATH", "/aws"),
                ],
            ),
            "TFC_VAULT_BACKED_AWS_MOUNT_PATH",
        ),
        (
            vault_vars(addr, &[("TFC_DEFAULT_VAULT_BACKED_GCP_AUTH", "true")]),
            "TFC_DEFAULT_VAULT_BACKED_GCP_AUTH",
        ),
        (
            vault_vars(
                addr,
                &[
                    gcp[0],
                    (
                        "TFC_VAULT_BACKED_GCP_AUTH_TYPE",
                        "impersonated_account/access_token",
                    ),
                ],
            ),
            "TFC_VAULT_BACKED_GCP_AUTH_TYPE",
        ),
        (
            vault_vars(addr, &[gcp[0], gcp[1]]),
            "TFC_VAULT_BACKED_GCP_RUN_VAULT_ROLESET",
        ),
        (
            vault_vars(
                addr,
                &[
                    azure[0],
                    azure[1],
                    ("TFC_VAULT_BACKED_AZURE_SLEEP_SECONDS", "soon"),
                ],
            ),
            "TFC_VAULT_BACKED_AZURE_SLEEP_SECONDS",
        ),
        (
            vec![
                ("TFC_VAULT_PROVIDER_AUTH_A", "true"),
                ("TFC_VAULT_ADDR_A", addr),
                ("TFC_VAULT_RUN_ROLE_A", "r"),
                azure[0],
                azure[1],
            ],
            "TFC_VAULT_BACKED_AZURE_VAULT_CONFIG",
        ),
    ];
    assert!(cases.len() >= 20);
    for (vars, variable) in &cases {
        let (status, body) = exchange(&server, "plan", vars).await;
        assert_eq!(status, 400, "{vars:?}: {body}");
        assert_eq!(
            body["field"],
            format!("variables.{variable}"),
            "{vars:?}: {body}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{variable}: ")),
            "{vars:?}: {message}"
        );
    }
    assert!(
        audit_lines(&audit).is_empty(),
        "a token was minted for a bad variable set"
    );
    let body =
        json!({"run": run_body("acme", "prod", "plan"), "variables": {"TFC_VAULT_ADDR": 8200}});
    let (status, body) = post(&server, "/v1/credentials", &server.tokens.all, &body).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("variables.TFC_VAULT_ADDR")),
        "{body}"
    );
}

/// Revoking makes the Vault token unusable; revoking it again is not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_makes_the_token_unusable_and_is_idempotent() {
    let Some(f) = fixture(false).await else {
        return;
    };
    let addr = f.bao.addr.clone();
    let (status, body) = exchange(&f.server, "plan", &vault_vars(&addr, &[])).await;
    assert_eq!(status, 200, "{body}");
    let vault = body["vault"].clone();
    let token = vault["default"]["token"].as_str().unwrap();
    assert_eq!(lookup_status(&f.bao, token, None).await, 200);
    assert_eq!(f.bao.read_status(token, "aws/creds/deploy").await, 200);
    let (status, done) = revoke(&f.server, &vault).await;
    assert_eq!(
        (status, done),
        (200, json!({"revoked": {"default": "revoked"}}))
    );
    assert_eq!(lookup_status(&f.bao, token, None).await, 403);
    assert_eq!(f.bao.read_status(token, "aws/creds/deploy").await, 403);
    let (status, done) = revoke(&f.server, &vault).await;
    assert_eq!(
        (status, done),
        (200, json!({"revoked": {"default": "not_valid"}}))
    );

    let mut elsewhere = vault.clone();
    elsewhere["default"]["address"] = json!("http://127.0.0.1:9");
    let (status, body) = revoke(&f.server, &elsewhere).await;
    assert_eq!(status, 403, "revocation honours the allowlist too: {body}");
    let (status, body) = revoke(&f.server, &json!({"aliases": {}})).await;
    assert_eq!(status, 400, "{body}");
    let mut injected = vault.clone();
    injected["default"]["namespace"] = json!("team\r\nX-Other: 1");
    let (status, body) = revoke(&f.server, &injected).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("default.namespace")),
        "{body}"
    );
    assert_no_secret_logged(&[token]);
}

/// The Vault client's general calls (the transit key store will use them too): write, read,
/// lookup-self, renew-self with an increment, revoke-self, and a revoked token recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_client_makes_vaults_own_calls() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let clients = VaultClients::new();
    let endpoint = Endpoint {
        address: bao.addr.clone(),
        namespace: None,
        ca_pem: None,
        timeout: Duration::from_secs(10),
    };
    let vault = clients.connect(&endpoint).unwrap();
    let root = VaultToken::new("root");
    let written = vault
        .write(&root, "secret/data/app", &json!({"data": {"k": "v"}}))
        .await
        .unwrap();
    assert_eq!(written.unwrap().data["version"], 1);
    let read = vault
        .read(&root, "secret/data/app", &[("version", "1")])
        .await
        .unwrap();
    assert_eq!(read.data["data"]["k"], "v");
    let created = bao
        .root_write(
            "auth/token/create",
            json!({"ttl": "10m", "policies": ["default"]}),
        )
        .await;
    let child = VaultToken::new(created["auth"]["client_token"].as_str().unwrap());
    let looked = vault.lookup_self(&child).await.unwrap();
    assert_eq!(looked.data["ttl"].as_u64().map(|t| t > 500), Some(true));
    let renewed = vault
        .renew_self(&child, Some(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!((renewed.lease_duration, renewed.renewable), (120, true));
    vault.revoke_self(&child).await.unwrap();
    let e = vault.lookup_self(&child).await.unwrap_err();
    assert!(e.is_bad_token(), "{e}");
    assert_eq!(e.to_string(), "vault answered 403: permission denied");
    assert!(!format!("{e:?} {child:?}").contains(child.expose()));
    clients.connect(&endpoint).unwrap();
    assert_eq!(clients.pool_count(), 1, "one pool per address and CA");
}

/// Every token accessor Vault holds, listed with the root token.
async fn accessors(bao: &Bao) -> BTreeSet<String> {
    let list = reqwest::Method::from_bytes(b"LIST").unwrap();
    let (status, body) = bao
        .call(list, "auth/token/accessors", Some("root"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

/// Waits up to `limit` until Vault holds exactly the accessors of `before`.
async fn wait_for_accessors(bao: &Bao, before: &BTreeSet<String>, limit: Duration) {
    let start = Instant::now();
    loop {
        let now = accessors(bao).await;
        if &now == before {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "vault tokens left alive after {limit:?}: {:?}",
            now.difference(before).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP proxy to a Vault that holds back every engine read (a request starting with
/// `GET /v1/aws/`) for ever, as a Vault stuck on its AWS call would, and passes everything else.
/// A real Vault cannot be made to stall one path on purpose.
struct StallingProxy {
    addr: String,
    stalled: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stalling_proxy(upstream: &str) -> StallingProxy {
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let stalled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&stalled);
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            connections.spawn(relay(client, server, Arc::clone(&counter)));
        }
    });
    StallingProxy {
        addr,
        stalled,
        task,
    }
}

async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    stalled: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if buf[..n].starts_with(b"GET /v1/aws/") {
            stalled.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        if server_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    answers.abort();
}

/// A default configuration logging in through `proxy` and reading AWS through it (the read
/// stalls), with a client timeout long enough to outlast the test.
fn stalled_vars(proxy: &str) -> Vec<(&str, &str)> {
    vec![
        ("TFC_VAULT_PROVIDER_AUTH", "true"),
        ("TFC_VAULT_ADDR", proxy),
        ("TFC_VAULT_RUN_ROLE", "tfe-acme-prod"),
        ("TFC_VAULT_CLIENT_TIMEOUT", "120"),
        ("TFC_VAULT_BACKED_AWS_AUTH", "true"),
        ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "iam_user"),
        ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "deploy"),
    ]
}

/// An OpenBao behind a stalling proxy, and a tfe-oidc allowed to call the proxy.
async fn stalled_fixture() -> Option<(Fixture, StallingProxy)> {
    let bao = Bao::start().await?;
    let proxy = stalling_proxy(&bao.addr).await;
    let f = wired(bao, &[&proxy.addr], "").await;
    Some((f, proxy))
}

/// Starts an exchange through `proxy` in the background, and returns once its engine read is
/// stalled (its Vault token then exists): the request's task, to be dropped or awaited.
async fn start_stalled_exchange(
    f: &Fixture,
    proxy: &StallingProxy,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let variables: BTreeMap<&str, &str> = stalled_vars(&proxy.addr).into_iter().collect();
    let body = json!({"run": run_body("acme", "prod", "plan"), "variables": variables});
    let request = f
        .server
        .client()
        .post(f.server.api_url("/v1/credentials"))
        .bearer_auth(&f.server.tokens.all)
        .json(&body);
    let task = tokio::spawn(async move {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    });
    let start = Instant::now();
    while proxy.stalled.load(Ordering::SeqCst) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the engine read never reached the proxy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task
}

fn logged(text: &str) -> bool {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).contains(text)
}

/// A client that disconnects while the engine read is stalled: the exchange is cut off, its
/// Vault token revoked and the outcome audited; Vault holds no more tokens than before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_exchange_leaves_no_live_vault_token() {
    let Some((f, proxy)) = stalled_fixture().await else {
        return;
    };
    let before = accessors(&f.bao).await;
    let request = start_stalled_exchange(&f, &proxy).await;
    let during = accessors(&f.bao).await;
    assert_eq!(
        during.difference(&before).count(),
        1,
        "the login's token exists while the read is stalled"
    );
    request.abort();
    let _ = request.await;
    wait_for_accessors(&f.bao, &before, Duration::from_secs(10)).await;
    let start = Instant::now();
    while !logged("reason=\"client_gone\"") {
        assert!(start.elapsed() < Duration::from_secs(5), "no audit event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged("credentials_abandoned"));
    assert!(
        metrics(&f.server)
            .await
            .contains("tfe_oidc_vault_requests_total{step=\"revoke\",outcome=\"ok\"} 1")
    );
}

/// Shutdown (what SIGTERM and SIGINT run) during an exchange whose engine read is stalled: 20 s
/// in, the exchange is cut off, its Vault token revoked, and the client answered 503; the
/// service is down within the 30 s drain, and Vault holds no more tokens than before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_off_a_long_exchange_and_revokes_its_vault_token() {
    let Some((f, proxy)) = stalled_fixture().await else {
        return;
    };
    let before = accessors(&f.bao).await;
    let request = start_stalled_exchange(&f, &proxy).await;
    assert_eq!(accessors(&f.bao).await.difference(&before).count(), 1);
    let Fixture { bao, server, .. } = f;
    let started = Instant::now();
    server.stop().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(19) && took < Duration::from_secs(30),
        "shutdown took {took:?}"
    );
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with(
            "the exchange was cut off (shutdown) and the vault tokens it had obtained were revoked"
        ),
        "{body}"
    );
    wait_for_accessors(&bao, &before, Duration::from_secs(1)).await;
    assert!(logged("reason=\"shutdown\""));
}

/// More configurations than one exchange may ask for: a 400 naming the bound, before any token
/// is minted or any Vault called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_configurations_are_refused_before_any_login() {
    capture_logs();
    let files = tempfile::tempdir().unwrap();
    let audit = files.path().join("audit.jsonl");
    let server = start_server(&["https://vault.internal:8200"], &audit, "60s").await;
    let tags: Vec<String> = (0..17).map(|i| format!("A{i}")).collect();
    let mut vars = vec![
        (
            "TFC_DEFAULT_VAULT_ADDR".to_owned(),
            "https://vault.internal:8200".to_owned(),
        ),
        ("TFC_DEFAULT_VAULT_RUN_ROLE".to_owned(), "r".to_owned()),
    ];
    for tag in &tags {
        vars.push((format!("TFC_VAULT_PROVIDER_AUTH_{tag}"), "true".to_owned()));
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, body) = exchange(&server, "plan", &vars).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "variables");
    assert_eq!(
        body["message"],
        "variables: 17 configurations (Vault logins, engine reads and manual audiences together) are more than the 16 one exchange may ask for: split them over several exchanges or remove unused aliases"
    );
    assert!(audit_lines(&audit).is_empty(), "a token was minted");
    assert!(!metrics(&server).await.contains("step=\"vault_login\""));

    let dup = format!(
        r#"{{"run": {}, "variables": {{"TFC_VAULT_ADDR": "a", "TFC_VAULT_ADDR": "b"}}}}"#,
        run_body("acme", "prod", "plan")
    );
    let response = server
        .client()
        .post(server.api_url("/v1/credentials"))
        .bearer_auth(&server.tokens.all)
        .header("content-type", "application/json")
        .body(dup)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("variable \"TFC_VAULT_ADDR\" is given twice: send each variable once"),
        "{body}"
    );
    let (status, body) = revoke(&server, &json!({"default": "s.SECRETINTYPEERROR"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains("SECRETINTYPEERROR"), "{body}");
}

/// Revocation is concurrent within one deadline: five entries on a Vault that never answers
/// hold the request for 8 s, not five client timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_five_tokens_on_a_silent_vault_takes_one_deadline() {
    capture_logs();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", silent.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in silent.incoming().take(5) {
            open.push(stream);
        }
        std::thread::sleep(Duration::from_secs(20));
    });
    let files = tempfile::tempdir().unwrap();
    let server = start_server(&[&addr], &files.path().join("audit.jsonl"), "60s").await;
    let entry = json!({"address": addr, "token": "s.silent"});
    let aliases: serde_json::Map<String, Value> =
        (1..5).map(|i| (format!("T{i}"), entry.clone())).collect();
    let started = Instant::now();
    let (status, body) = revoke(&server, &json!({"default": entry, "aliases": aliases})).await;
    let took = started.elapsed();
    assert_eq!(status, 502, "{body}");
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(12),
        "{took:?}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .ends_with("vault did not answer within 8s"),
        "{body}"
    );
    drop(held);
}

/// The largest answer an exchange gives (16 Vault configurations sharing one CA through
/// `TFC_DEFAULT_VAULT_ENCODED_CACERT`) is larger than `api.max_body`, and revokes whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_exchange_answer_can_be_revoked() {
    let Some(bao) = Bao::start_tls().await else {
        return;
    };
    let addr = bao.addr.clone();
    let f = wired(bao, &[&addr], "max_body = \"8KiB\"").await;
    let encoded = STANDARD.encode(f.bao.ca_pem.as_ref().unwrap());
    let tags: Vec<String> = (1..16).map(|i| format!("T{i}")).collect();
    let mut vars = vec![
        ("TFC_VAULT_PROVIDER_AUTH".to_owned(), "true".to_owned()),
        ("TFC_DEFAULT_VAULT_ADDR".to_owned(), addr.clone()),
        (
            "TFC_DEFAULT_VAULT_RUN_ROLE".to_owned(),
            "tfe-acme-prod".to_owned(),
        ),
        ("TFC_DEFAULT_VAULT_ENCODED_CACERT".to_owned(), encoded),
    ];
    for tag in &tags {
        vars.push((format!("TFC_VAULT_PROVIDER_AUTH_{tag}"), "true".to_owned()));
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, body) = exchange(&f.server, "plan", &vars).await;
    assert_eq!(status, 200, "{body}");
    let vault = &body["vault"];
    assert!(
        vault.to_string().len() > 8 << 10,
        "the answer fits api.max_body: {}",
        vault.to_string().len()
    );
    let (status, done) = revoke(&f.server, vault).await;
    assert_eq!(status, 200, "{done}");
    let revoked = done["revoked"].as_object().unwrap();
    assert_eq!(revoked.len(), 16, "{done}");
    assert!(revoked.values().all(|v| v == "revoked"), "{done}");
}
