//! Caller identity (docs/threat-model.md): a static API token bound with `sub=`, and federated
//! callers whose upstream OIDC token is checked against an `[[api.federation]]` rule.
//!
//! The upstream issuer is a real OpenBao 2.7.2: its identity tokens
//! (`identity/oidc/token/<role>`) are OIDC tokens with discovery under `<addr>/v1/identity/oidc`.
//! A user logs in with userpass; its entity's metadata feeds the role's template, so a claim of
//! the token is chosen by the test. The same OpenBao is the Vault of the credential exchange. A
//! listener that counts connections stands for a Vault where any login attempt would show
//! (OpenBao 2 no longer lets the API enable an audit device). A second tfe-oidc is an upstream
//! issuer too.

use crate::common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use common::bao::{Bao, deploy_vault};
use common::{Options, TestServer, run_body, wire};
use tfe_oidc::http::auth::{Scope, bound_tokens_file_line, new_token};
use tfe_oidc::http::federation::REFETCH_INTERVAL;

/// The audience the upstream tokens are minted for.
const AUDIENCE: &str = "https://tfe-oidc.test";

/// `POST <path>` on the API with `bearer`: status and JSON body.
async fn post(server: &TestServer, path: &str, bearer: &str, body: &Value) -> (u16, Value) {
    server.post_as(path, bearer, body).await
}

fn exchange_body(vault_addr: &str, workspace: &str) -> Value {
    json!({
        "run": run_body("acme", workspace, "plan"),
        "variables": {
            "TFC_VAULT_PROVIDER_AUTH": "true",
            "TFC_VAULT_ADDR": vault_addr,
            "TFC_VAULT_RUN_ROLE": format!("tfe-acme-{workspace}"),
        },
    })
}

/// A Vault address where any contact shows: a listener that counts the connections it accepts
/// and closes them.
struct Trap {
    addr: String,
    contacts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Trap {
    fn start() -> Trap {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let contacts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&contacts);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(stream);
            }
        });
        Trap { addr, contacts }
    }

    fn contacts(&self) -> usize {
        self.contacts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An OpenBao that issues identity tokens: userpass user `ci`, keys `rsa` (RS256) and `ec`
/// (ES256), and roles whose template puts `project` (from the entity's metadata) in the token.
struct Upstream {
    bao: Bao,
    /// The OpenBao client token of user `ci`.
    user: String,
    entity: String,
}

impl Upstream {
    async fn start() -> Option<Upstream> {
        let bao = Bao::start().await?;
        bao.root_write("sys/auth/userpass", json!({"type": "userpass"}))
            .await;
        bao.root_write(
            "sys/policies/acl/id-token",
            json!({"policy": "path \"identity/oidc/token/*\" { capabilities = [\"read\"] }"}),
        )
        .await;
        bao.root_write(
            "auth/userpass/users/ci",
            json!({"password": "pw", "token_policies": "id-token"}),
        )
        .await;
        for (key, algorithm) in [("rsa", "RS256"), ("ec", "ES256")] {
            bao.root_write(
                &format!("identity/oidc/key/{key}"),
                json!({"allowed_client_ids": "*", "algorithm": algorithm, "verification_ttl": "1h"}),
            )
            .await;
        }
        let project = r#"{"project": {{identity.entity.metadata.project}}}"#;
        for (role, key, client_id, template) in [
            ("ci", "rsa", AUDIENCE, project),
            ("ci-ec", "ec", AUDIENCE, project),
            ("other-aud", "rsa", "https://elsewhere.test", project),
            ("colon", "rsa", AUDIENCE, r#"{"project": "payroll:prod"}"#),
        ] {
            bao.root_write(
                &format!("identity/oidc/role/{role}"),
                json!({"key": key, "client_id": client_id, "template": template, "ttl": "5m"}),
            )
            .await;
        }
        let (status, login) = bao
            .call(
                reqwest::Method::POST,
                "auth/userpass/login/ci",
                None,
                Some(&json!({"password": "pw"})),
            )
            .await;
        assert_eq!(status, 200, "{login}");
        let user = login["auth"]["client_token"].as_str().unwrap().to_owned();
        let entity = login["auth"]["entity_id"].as_str().unwrap().to_owned();
        let upstream = Upstream { bao, user, entity };
        upstream.set_project("prod").await;
        Some(upstream)
    }

    fn issuer(&self) -> String {
        format!("{}/v1/identity/oidc", self.bao.addr)
    }

    async fn set_project(&self, project: &str) {
        self.bao
            .root_write(
                &format!("identity/entity/id/{}", self.entity),
                json!({"metadata": {"project": project}}),
            )
            .await;
    }

    /// An identity token of role `role` for user `ci`.
    async fn token(&self, role: &str) -> String {
        let (status, answer) = self
            .bao
            .call(
                reqwest::Method::GET,
                &format!("identity/oidc/token/{role}"),
                Some(&self.user),
                None,
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        answer["data"]["token"].as_str().unwrap().to_owned()
    }

    /// The `[[api.federation]]` rule that accepts user `ci`'s tokens for workspace `{project}`.
    fn rule(&self) -> String {
        format!(
            "[[api.federation]]\nname = \"openbao\"\nissuer = {:?}\naudiences = [{AUDIENCE:?}]\n\
             bound_claims = {{ namespace = \"root\" }}\nscopes = [\"tokens\", \"credentials\"]\n\
             sub = [\"organization:acme:project:*:workspace:{{project}}:run_phase:*\"]\n",
            self.issuer()
        )
    }
}

/// A TLS tfe-oidc whose exchange may call `bao` (and `also`), with `api_toml` in its `[api]`
/// section, and the JWT roles `tfe-acme-prod` and `tfe-acme-other` wired in `bao`.
async fn server(bao: &Bao, also: &str, api_toml: &str) -> TestServer {
    let server = TestServer::start(Options {
        tls: true,
        api_toml: api_toml.to_owned(),
        extra_toml: format!(
            "[exchange]\nallowed_vault_addrs = [{:?}, {also:?}]\nvault_timeout = \"10s\"\n\
             [audit]\npath = {:?}\n",
            bao.addr,
            bao.home.path().join("tfe-oidc-audit.jsonl"),
        ),
        ..Options::default()
    })
    .await;
    let policy = deploy_vault().join("policy.hcl");
    for workspace in ["prod", "other"] {
        wire(bao, &server, policy.to_str().unwrap(), workspace, "*", &[]);
    }
    server
}

/// Adds a caller bound to acme's `prod` workspace to the tokens file and reloads it (SIGHUP's
/// path); returns its bearer token.
fn add_bound_caller(server: &TestServer) -> String {
    let token = new_token();
    let line = bound_tokens_file_line(
        &token,
        "ci-prod",
        &[Scope::Tokens, Scope::Credentials],
        &["organization:acme:project:*:workspace:prod:run_phase:*".to_owned()],
    );
    let path = server.dir.path().join("api-tokens");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("{line}\n"));
    std::fs::write(&path, text).unwrap();
    assert!(server.running.reload(), "the tokens file reloads");
    token.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_bound_token_gets_its_workspace_only_and_vault_never_sees_the_refused_login() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let trap = Trap::start();
    let server = server(&bao, &trap.addr, "").await;
    let bound = add_bound_caller(&server);

    let (status, body) = post(
        &server,
        "/v1/tokens",
        &bound,
        &run_body("acme", "prod", "plan"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let audit = bao.home.path().join("tfe-oidc-audit.jsonl");
    let signed = || std::fs::read_to_string(&audit).unwrap().lines().count();
    let signed_before = signed();
    assert_eq!(signed_before, 1, "the allowed token is audited");
    for other in [
        run_body("acme", "other", "plan"),
        run_body("payroll", "prod", "apply"),
        common::module_test_body("acme", "vpc"),
        common::stack_body("prod", "plan"),
    ] {
        let (status, body) = post(&server, "/v1/tokens", &bound, &other).await;
        assert_eq!(status, 403, "{other}: {body}");
        assert_eq!(body["error"], "forbidden");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("\"ci-prod\"") && message.contains("sub \"organization:"),
            "the refusal names the caller and the sub: {message}"
        );
    }

    assert_eq!(
        signed(),
        signed_before,
        "nothing was signed for the refused requests"
    );

    let (status, body) = post(
        &server,
        "/v1/credentials",
        &bound,
        &exchange_body(&bao.addr, "prod"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["vault"]["default"]["token"].is_string(), "{body}");

    // Refused before any Vault is called: the trap sees no connection.
    let (status, body) = post(
        &server,
        "/v1/credentials",
        &bound,
        &exchange_body(&trap.addr, "other"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("workspace:other"),
        "{body}"
    );
    assert_eq!(
        trap.contacts(),
        0,
        "no Vault was contacted for the refused request"
    );
    // The trap does see an exchange that is let through (it fails there, as the trap is no Vault).
    let (status, _) = post(
        &server,
        "/v1/credentials",
        &server.tokens.all,
        &exchange_body(&trap.addr, "other"),
    )
    .await;
    assert_ne!(status, 200);
    assert!(trap.contacts() > 0, "the trap counts contacts");
    let (status, body) = post(
        &server,
        "/v1/credentials",
        &bound,
        &exchange_body(&bao.addr, "other"),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // The same request from an unbound caller is Vault's to answer, and it allows it: the 403
    // above was the sub= binding's.
    let (status, body) = post(
        &server,
        "/v1/credentials",
        &server.tokens.all,
        &exchange_body(&bao.addr, "other"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openbao_identity_token_is_a_caller_bound_by_its_claims() {
    let Some(up) = Upstream::start().await else {
        return;
    };
    let server = server(&up.bao, &up.bao.addr, &up.rule()).await;

    // RS256 and ES256 tokens alike; the project claim picks the workspace.
    for role in ["ci", "ci-ec"] {
        let token = up.token(role).await;
        let (status, body) = post(
            &server,
            "/v1/tokens",
            &token,
            &run_body("acme", "prod", "plan"),
        )
        .await;
        assert_eq!(status, 200, "{role}: {body}");
        let (status, body) = post(
            &server,
            "/v1/tokens",
            &token,
            &run_body("acme", "other", "plan"),
        )
        .await;
        assert_eq!(status, 403, "{role}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains(&format!("openbao:{}", up.entity)),
            "the caller is <rule>:<upstream sub>: {body}"
        );
    }
    let token = up.token("ci").await;
    let (status, body) = post(
        &server,
        "/v1/credentials",
        &token,
        &exchange_body(&up.bao.addr, "prod"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Every token signed for it is audited under `<rule>:<upstream sub>`.
    let audit = std::fs::read_to_string(up.bao.home.path().join("tfe-oidc-audit.jsonl")).unwrap();
    let caller = format!("openbao:{}", up.entity);
    let callers: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["caller"].clone())
        .collect();
    assert!(
        !callers.is_empty() && callers.iter().all(|c| *c == json!(caller)),
        "{audit}"
    );

    // The entity's project becomes `other`: the next token reaches `other`, not `prod`.
    up.set_project("other").await;
    let token = up.token("ci").await;
    let (status, body) = post(
        &server,
        "/v1/credentials",
        &token,
        &exchange_body(&up.bao.addr, "other"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(
        &server,
        "/v1/tokens",
        &token,
        &run_body("acme", "prod", "plan"),
    )
    .await;
    assert_eq!(status, 403);

    // `tfe-oidc run` takes the upstream token from its token file, with no other flag.
    let file = up.bao.home.path().join("id-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let out = tokio::task::block_in_place(|| run_with(&server, &up.bao, &file, "other"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::task::block_in_place(|| run_with(&server, &up.bao, &file, "prod"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "refused: {stderr}");
    assert!(!stderr.contains(&token), "the token is not printed");
    server.stop().await;
}

/// `tfe-oidc run` for acme/`workspace`, apply, with the bearer token in `token_file` and the
/// default Vault configuration of `bao`; COMMAND succeeds when it was given a Vault token.
fn run_with(
    server: &TestServer,
    bao: &Bao,
    token_file: &std::path::Path,
    workspace: &str,
) -> std::process::Output {
    let tmp = tempfile::tempdir().unwrap();
    let mut flags: Vec<&str> = common::RUN_FLAGS.to_vec();
    let at = flags.iter().position(|f| *f == "--workspace").unwrap() + 1;
    flags[at] = workspace;
    let role = format!("tfe-acme-{workspace}");
    std::process::Command::new(common::binary())
        .arg("run")
        .arg("--api")
        .arg(server.api_url(""))
        .arg("--api-token-file")
        .arg(token_file)
        .args(flags)
        .args([
            "--phase",
            "apply",
            "--",
            "sh",
            "-c",
            "test -n \"$VAULT_TOKEN\"",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("TMPDIR", tmp.path())
        .env("TFC_VAULT_PROVIDER_AUTH", "true")
        .env("TFC_VAULT_ADDR", &bao.addr)
        .env("TFC_VAULT_RUN_ROLE", role)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// A JWT with `header` and `claims` and a made-up signature.
fn unsigned(header: Value, claims: Value) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string()),
        B64.encode(b"not a signature")
    )
}

/// A JWT signed (RS256) by a fresh key that no JWKS holds.
fn foreign_signed(header: &Value, claims: &Value) -> String {
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::RSA_PKCS1_SHA256;
    let key = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{input}.{}", B64.encode(signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_misaddressed_expired_and_injecting_tokens_are_refused_never_500() {
    let Some(up) = Upstream::start().await else {
        return;
    };
    let clock = tfe_oidc::keys::FakeClock::new(common::unix_now());
    let server = TestServer::start(Options {
        api_toml: up.rule(),
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await;
    let prod = run_body("acme", "prod", "plan");
    let good = up.token("ci").await;
    assert_eq!(post(&server, "/v1/tokens", &good, &prod).await.0, 200);

    let parts: Vec<&str> = good.split('.').collect();
    let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    let none = unsigned(json!({"alg": "none", "kid": header["kid"]}), claims.clone());
    let none = format!("{}.", none.rsplit_once('.').unwrap().0);
    let mut raised = claims.clone();
    raised["project"] = json!("other");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(raised.to_string()),
        parts[2]
    );
    // A foreign signer: another key of its own, with the real kid and claims.
    let foreign = foreign_signed(&json!({"alg": "RS256", "kid": header["kid"]}), &claims);
    let cases = [
        ("wrong audience", up.token("other-aud").await, 401, "aud"),
        ("foreign signer", foreign, 401, "signature"),
        ("changed claims", forged, 401, "signature"),
        ("alg none", none, 401, "alg"),
        ("claim with ':'", up.token("colon").await, 403, "project"),
        (
            "unknown kid",
            unsigned(json!({"alg": "RS256", "kid": "nope"}), claims.clone()),
            401,
            "kid",
        ),
    ];
    for (what, token, status, names) in cases {
        let (got, body) = post(&server, "/v1/tokens", &token, &prod).await;
        assert_eq!(got, status, "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(names),
            "{what}: the refusal names {names}: {body}"
        );
        assert!(!message.contains(&token), "{what}: the token is not echoed");
    }
    // Expired: the service's clock moves past exp (5 minutes) and the 60 s leeway.
    clock.advance(400);
    let (status, body) = post(&server, "/v1/tokens", &good, &prod).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["message"].as_str().unwrap().contains("exp"), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_key_rotation_is_followed_without_a_restart() {
    let Some(up) = Upstream::start().await else {
        return;
    };
    let server = TestServer::start(Options {
        api_toml: up.rule(),
        ..Options::default()
    })
    .await;
    let prod = run_body("acme", "prod", "plan");
    let before = up.token("ci").await;
    assert_eq!(post(&server, "/v1/tokens", &before, &prod).await.0, 200);
    up.bao
        .root_write("identity/oidc/key/rsa/rotate", json!({}))
        .await;
    let after = up.token("ci").await;
    assert_ne!(
        common::raw::token_kid(&before),
        common::raw::token_kid(&after)
    );
    // The JWKS was fetched moments ago: an unknown kid refetches it once the rate limit allows.
    tokio::time::sleep(REFETCH_INTERVAL).await;
    let (status, body) = post(&server, "/v1/tokens", &after, &prod).await;
    assert_eq!(status, 200, "{body}");
    // The previous key is still published: its tokens keep working.
    assert_eq!(post(&server, "/v1/tokens", &before, &prod).await.0, 200);
    server.stop().await;
}

/// An unknown kid while the upstream hangs (OpenBao frozen) makes that request wait for the
/// refetch; a token whose key is cached is answered at once all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_refetch_never_holds_up_a_token_whose_key_is_cached() {
    let Some(up) = Upstream::start().await else {
        return;
    };
    let server = TestServer::start(Options {
        api_toml: up.rule(),
        ..Options::default()
    })
    .await;
    let prod = run_body("acme", "prod", "plan");
    let valid = up.token("ci").await;
    assert_eq!(post(&server, "/v1/tokens", &valid, &prod).await.0, 200);
    let issuer = up.issuer();
    let unknown = unsigned(
        json!({"alg": "RS256", "kid": "not-published"}),
        json!({"iss": issuer, "aud": AUDIENCE, "exp": common::unix_now() + 60}),
    );
    tokio::time::sleep(REFETCH_INTERVAL).await;
    up.bao.freeze();
    let hanging = {
        let (client, url) = (server.client(), server.api_url("/v1/tokens"));
        let body = prod.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(unknown)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (status, body) = post(&server, "/v1/tokens", &valid, &prod).await;
    let took = started.elapsed();
    up.bao.resume();
    assert_eq!(status, 200, "{body}");
    assert!(
        took < Duration::from_secs(2),
        "a cached key waited {took:?} for the upstream"
    );
    let refused = hanging.await.unwrap().unwrap();
    assert!(refused == 503 || refused == 401, "{refused}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_503_naming_it() {
    let port = common::free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let server = TestServer::start(Options {
        api_toml: format!(
            "[[api.federation]]\nname = \"gone\"\nissuer = {issuer:?}\naudiences = [{AUDIENCE:?}]\nscopes = [\"tokens\"]\nsub = [\"organization:acme:*\"]\n"
        ),
        ..Options::default()
    })
    .await;
    let token = unsigned(
        json!({"alg": "RS256", "kid": "k"}),
        json!({"iss": issuer, "aud": AUDIENCE, "exp": common::unix_now() + 60}),
    );
    let (status, body) = post(
        &server,
        "/v1/tokens",
        &token,
        &run_body("acme", "prod", "plan"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains(&issuer),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tfe_oidc_is_an_upstream_issuer() {
    let upstream = TestServer::start(Options::default()).await;
    let rule = format!(
        "[[api.federation]]\nname = \"tfe-a\"\nissuer = {:?}\naudiences = [\"vault.workload.identity\"]\n\
         bound_claims = {{ terraform_organization_name = \"acme\" }}\nscopes = [\"tokens\"]\n\
         sub = [\"organization:acme:project:*:workspace:{{terraform_workspace_name}}:run_phase:*\"]\n",
        upstream.issuer()
    );
    let server = TestServer::start(Options {
        api_toml: rule,
        ..Options::default()
    })
    .await;
    let token = upstream.mint("prod", "apply").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = post(
        &server,
        "/v1/tokens",
        &token,
        &run_body("acme", "prod", "plan"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &server,
        "/v1/tokens",
        &token,
        &run_body("acme", "staging", "plan"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Scope tokens only: the exchange is refused before anything else.
    let (status, _) = post(&server, "/v1/credentials", &token, &json!({})).await;
    assert_eq!(status, 403);
    server.stop().await;
    upstream.stop().await;
}

/// An upstream issuer that counts the requests it answers: its discovery document, and a JWKS
/// of `jwks` (a body of any size).
struct CountingIssuer {
    issuer: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingIssuer {
    async fn start(jwks: String) -> CountingIssuer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}).to_string();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = vec![0; 4096];
                let n = stream.read(&mut head).await.unwrap_or(0);
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let head = String::from_utf8_lossy(&head[..n]);
                let body = match head.split_whitespace().nth(1) {
                    Some("/jwks") => jwks.as_str(),
                    _ => discovery.as_str(),
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        CountingIssuer {
            issuer,
            requests,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn rule(&self) -> String {
        format!(
            "[[api.federation]]\nname = \"counted\"\nissuer = {:?}\naudiences = [{AUDIENCE:?}]\nscopes = [\"tokens\"]\nsub = [\"organization:acme:*\"]\n",
            self.issuer
        )
    }

    /// A token of this issuer naming `kid` (never validly signed: no key is published).
    fn token(&self, kid: &str) -> String {
        unsigned(
            json!({"alg": "RS256", "kid": kid}),
            json!({"iss": self.issuer, "aud": AUDIENCE, "exp": common::unix_now() + 60}),
        )
    }
}

impl Drop for CountingIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_fetches_the_upstream_jwks_once_per_interval() {
    let upstream = CountingIssuer::start(json!({"keys": []}).to_string()).await;
    let server = TestServer::start(Options {
        api_toml: upstream.rule(),
        ..Options::default()
    })
    .await;
    let prod = run_body("acme", "prod", "plan");
    for i in 0..40 {
        let (status, body) = post(
            &server,
            "/v1/tokens",
            &upstream.token(&format!("k{i}")),
            &prod,
        )
        .await;
        assert_eq!(status, 401, "{body}");
        assert!(body["message"].as_str().unwrap().contains("kid"), "{body}");
    }
    assert_eq!(
        upstream.requests(),
        2,
        "one discovery and one JWKS fetch for 40 unknown kids"
    );
    tokio::time::sleep(REFETCH_INTERVAL).await;
    post(&server, "/v1/tokens", &upstream.token("later"), &prod).await;
    assert_eq!(upstream.requests(), 4, "refetched once the interval passed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upstream_jwks_is_not_read_whole() {
    let padding = "x".repeat(300 * 1024);
    let upstream = CountingIssuer::start(json!({"keys": [], "padding": padding}).to_string()).await;
    let server = TestServer::start(Options {
        api_toml: upstream.rule(),
        ..Options::default()
    })
    .await;
    let (status, body) = post(
        &server,
        "/v1/tokens",
        &upstream.token("k"),
        &run_body("acme", "prod", "plan"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("larger than"),
        "{body}"
    );
    server.stop().await;
}

#[test]
fn api_token_new_binds_subs_and_check_config_warns_about_unbound_signers() {
    use common::process::{Setup, run, text, tfe_oidc};
    // Appended after `[keys]`: an array of tables may extend `[api]` there.
    let setup = Setup::new(&format!(
        "[[api.federation]]\nname = \"ci\"\nissuer = \"https://gitlab.example.com\"\naudiences = [{AUDIENCE:?}]\nscopes = [\"credentials\"]\nsub = [\"organization:acme:project:*:workspace:{{environment}}:run_phase:*\"]\n"
    ));
    let globs = [
        "organization:acme:project:Default Project:workspace:prod:run_phase:*",
        "organization:acme:module:vpc:operation:test_run",
    ];
    let out = run(tfe_oidc(setup.dir.path()).args([
        "api-token",
        "new",
        "--name",
        "ci-prod",
        "--scopes",
        "tokens,credentials",
        "--sub",
        globs[0],
        "--sub",
        globs[1],
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = stdout.lines().nth(1).unwrap();
    assert!(
        line.ends_with(&format!(
            " ci-prod tokens,credentials sub={},{}",
            globs[0], globs[1]
        )),
        "{line}"
    );
    let bad = run(tfe_oidc(setup.dir.path()).args(["api-token", "new", "--sub", "a,b"]));
    assert_eq!(bad.status.code(), Some(64), "{}", text(&bad.stderr));
    assert!(text(&bad.stderr).contains("--sub"), "{}", text(&bad.stderr));

    // The test tokens file holds `tfe` (every scope) and `runner` (tokens), both unbound, and
    // `operator` (keys only); the new bound line is added.
    let path = setup.dir.path().join("api-tokens");
    let mut tokens = std::fs::read_to_string(&path).unwrap();
    tokens.push_str(&format!("{line}\n"));
    std::fs::write(&path, tokens).unwrap();
    let out = run(&mut setup.command(&["check-config"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for (caller, warned) in [
        ("tfe", true),
        ("runner", true),
        ("operator", false),
        ("ci-prod", false),
    ] {
        let warning = format!("caller {caller:?} has no sub= binding");
        assert_eq!(stderr.contains(&warning), warned, "{caller}: {stderr}");
    }
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("api.federation[0].sub = ") && stdout.contains("{environment}"),
        "check-config shows the federation rule:\n{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_tokens_are_logged_by_reason_never_by_value() {
    use common::process::Setup;
    common::init_crypto();
    let upstream = CountingIssuer::start(json!({"keys": []}).to_string()).await;
    let setup = Setup::new(&upstream.rule());
    let server = tokio::task::block_in_place(|| {
        setup
            .serve(&["--log-format", "json"], &[("TFE_OIDC_LOG", "debug")])
            .ready()
    });
    let tokens = [
        upstream.token("unknown-kid"),
        unsigned(
            json!({"alg": "none"}),
            json!({"iss": upstream.issuer, "aud": AUDIENCE}),
        ),
        unsigned(
            json!({"alg": "RS256", "kid": "k"}),
            json!({"iss": "https://elsewhere.test", "aud": AUDIENCE}),
        ),
    ];
    let client = reqwest::Client::new();
    for token in &tokens {
        let response = client
            .post(format!("http://{}/v1/tokens", setup.api))
            .bearer_auth(token)
            .json(&run_body("acme", "prod", "plan"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
    }
    let (stdout, stderr) = tokio::task::block_in_place(|| server.stop());
    let log = format!("{stdout}{stderr}");
    assert!(
        log.contains("federation_refused") && log.contains("alg"),
        "the refusals are audit events with their reason:\n{log}"
    );
    for token in &tokens {
        let signature = token.rsplit('.').next().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        assert!(
            !log.contains(payload) && !log.contains(signature),
            "a token reached the log:\n{log}"
        );
    }
}
