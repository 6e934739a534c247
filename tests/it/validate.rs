//! `tfe-oidc validate`, run as the binary, against a real `tfe-oidc` (in-process, HTTPS with a
//! test CA, or `tfe-oidc serve` with a certificate from `deploy/tls/make-certs.sh`) and, for the
//! failures the real server cannot be made to produce (a short key, a kid that is not its
//! thumbprint, a skewed clock, an expired certificate), a tiny in-test issuer serving crafted
//! documents (`common::FakeIssuer`). Each check is made to fail for its own reason, and the
//! checks after it are reported as skipped.

use crate::common;
use futures_util::FutureExt;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use aws_lc_rs::rsa::{KeyPair, KeySize};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use tfe_oidc::discovery::{CONFIGURATION_PATH, JWKS_PATH, ProviderMetadata};
use tfe_oidc::keys::{PublicJwk, SigningKey, public_jwk};

use common::{
    FakeDocuments, FakeIssuer, Options, Process, TestServer, Validated, free_port, make_certs,
    validate,
};

/// Every check of a run without `--token`, in order.
const NETWORK_CHECKS: &[&str] = &[
    "issuer_url",
    "dns",
    "tcp",
    "tls",
    "discovery",
    "discovery_issuer",
    "jwks_uri",
    "clock",
    "jwks",
    "jwks_keys",
];
const TOKEN_CHECKS: &[&str] = &[
    "token",
    "token_kid",
    "token_signature",
    "token_claims",
    "token_audience",
    "token_times",
];

async fn tls_server() -> TestServer {
    TestServer::start(Options {
        tls: true,
        ..Default::default()
    })
    .await
}

fn ca_of(server: &TestServer) -> String {
    server.pki.as_ref().unwrap().ca.to_str().unwrap().to_owned()
}

/// `validate --issuer <issuer> --ca-file <ca> --format json <extra>`.
async fn validate_json(issuer: &str, ca: Option<&str>, extra: &[&str]) -> Validated {
    let mut args = vec!["--issuer", issuer, "--format", "json"];
    if let Some(ca) = ca {
        args.extend(["--ca-file", ca]);
    }
    args.extend_from_slice(extra);
    validate(&args, None).await
}

fn names(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts exit 1, that `name` failed (not skipped) with `detail` in its detail, has a fix, and
/// that every check in `skipped` was skipped.
fn assert_fails(out: &Validated, name: &str, detail: &str, skipped: &[&str]) -> Value {
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.json()["ok"], false);
    let check = out.check(name);
    assert_eq!(check["ok"], false, "{check}");
    assert!(check.get("skipped").is_none(), "{check}");
    let text = check["detail"].as_str().unwrap();
    assert!(text.contains(detail), "{name}: {text:?} lacks {detail:?}");
    assert!(
        check["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "{check}"
    );
    for later in skipped {
        assert_eq!(out.check(later)["skipped"], true, "{later}: {}", out.stdout);
    }
    check
}

fn token_file(dir: &Path, token: &str) -> String {
    let path = dir.join("token.jwt");
    std::fs::write(&path, token).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_tls_issuer_passes_every_check_with_a_minted_token() {
    let server = tls_server().await;
    let minted = server.mint("prod", "apply").await;
    let token = minted["token"].as_str().unwrap();
    let file = token_file(server.dir.path(), token);
    let out = validate_json(server.issuer(), Some(&ca_of(&server)), &["--token", &file]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let report = out.json();
    assert_eq!(report["ok"], true);
    assert_eq!(report["issuer"], server.issuer());
    let expected: Vec<&str> = NETWORK_CHECKS.iter().chain(TOKEN_CHECKS).copied().collect();
    assert_eq!(names(&report), expected);
    for check in report["checks"].as_array().unwrap() {
        assert_eq!(check["ok"], true, "{check}");
        assert!(check.get("fix").is_none(), "{check}");
    }
    assert!(
        out.check("token_kid")["detail"]
            .as_str()
            .unwrap()
            .contains(minted["kid"].as_str().unwrap())
    );
    assert!(!out.stdout.contains(token), "the token was printed");

    // The same in text: one ✓ line per check and the verdict; the token from stdin.
    let text = validate(
        &[
            "--issuer",
            server.issuer(),
            "--ca-file",
            &ca_of(&server),
            "--token",
            "-",
        ],
        Some(format!("{token}\n")),
    )
    .await;
    assert_eq!(text.code, 0, "{text:?}");
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), expected.len() + 1, "{}", text.stdout);
    for (line, name) in lines.iter().zip(&expected) {
        assert!(line.starts_with(&format!("✓ {name} ")), "{line}");
    }
    assert!(
        lines.last().unwrap().starts_with("result: ok"),
        "{}",
        text.stdout
    );
    assert!(!text.stdout.contains(token) && !text.stderr.contains(token));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trailing_slash_is_named_against_the_served_issuer() {
    let server = tls_server().await;
    let asked = format!("{}/", server.issuer());
    let out = validate_json(&asked, Some(&ca_of(&server)), &[]).await;
    let check = assert_fails(&out, "discovery_issuer", "", &[]);
    assert_eq!(
        check["detail"],
        format!(
            "the discovery document says issuer {} but you asked for {asked}",
            server.issuer()
        )
    );
    assert!(
        check["fix"]
            .as_str()
            .unwrap()
            .contains("byte for byte; drop the trailing slash")
    );
    assert_fails(&out, "issuer_url", "ends with a slash", &[]);
    // Everything else works: the document was fetched where Vault fetches it.
    for name in ["tls", "discovery", "jwks_keys"] {
        assert_eq!(out.check(name)["ok"], true, "{name}");
    }
    server.stop().await;
}

/// Vault also trusts a server whose own certificate is its `oidc_discovery_ca_pem`; so does
/// validate, and it says that the dates were not checked on that path.
#[tokio::test(flavor = "multi_thread")]
async fn the_servers_own_certificate_as_the_ca_file_passes_as_with_vault() {
    let server = tls_server().await;
    let leaf = server.pki.as_ref().unwrap().server_cert.clone();
    let out = validate_json(server.issuer(), leaf.to_str(), &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let detail = out.check("tls")["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("the certificate itself is in the CA file"),
        "{detail}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_file_without_the_issuers_ca_is_an_unknown_ca() {
    let server = tls_server().await;
    let other = tempfile::tempdir().unwrap();
    let Some(()) = make_certs(other.path(), "DNS:elsewhere.internal") else {
        return;
    };
    let ca = other.path().join("ca.pem");
    let out = validate_json(server.issuer(), ca.to_str(), &[]).await;
    let check = assert_fails(
        &out,
        "tls",
        "is not signed by a CA in",
        &["discovery", "jwks", "clock"],
    );
    assert!(
        check["fix"].as_str().unwrap().contains("--ca-file"),
        "{check}"
    );
    assert_eq!(out.check("tcp")["ok"], true);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_name_is_a_wrong_name() {
    let Some(binary) = common::require_tool("openssl").map(|_| common::binary()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    make_certs(&tls, "DNS:tfe-oidc.internal").unwrap();
    let (dport, aport) = (free_port(), free_port());
    let config = dir.path().join("tfe-oidc.toml");
    std::fs::write(
        &config,
        format!(
            "issuer = \"https://tfe-oidc.internal:{dport}\"\n\
             [discovery]\nlisten = \"127.0.0.1:{dport}\"\ntls_cert = {:?}\ntls_key = {:?}\n\
             [api]\nlisten = \"127.0.0.1:{aport}\"\n[keys]\ndir = {:?}\n",
            tls.join("server.pem"),
            tls.join("server-key.pem"),
            dir.path().join("keys"),
        ),
    )
    .unwrap();
    let mut serve = Command::new(binary);
    serve.args(["serve", "--config"]).arg(&config);
    let mut process = Process::spawn("tfe-oidc serve", serve, dir.path().join("serve.log"));
    process.wait_until(|| std::net::TcpStream::connect(("127.0.0.1", aport)).is_ok());

    // Vault asked for the address; the certificate names only tfe-oidc.internal.
    let issuer = format!("https://127.0.0.1:{dport}");
    let ca = tls.join("ca.pem");
    let out = validate_json(&issuer, ca.to_str(), &[]).await;
    let check = assert_fails(
        &out,
        "tls",
        "is not valid for 127.0.0.1 (it names tfe-oidc.internal)",
        &["discovery"],
    );
    assert!(
        check["fix"].as_str().unwrap().contains("SAN for 127.0.0.1"),
        "{check}"
    );
    // Pinning the certificate itself does not excuse the name.
    let leaf = tls.join("server.pem");
    let out = validate_json(&issuer, leaf.to_str(), &[]).await;
    assert_fails(&out, "tls", "is not valid for 127.0.0.1", &["discovery"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_host_name_for_the_same_listener_is_not_the_issuer() {
    let server = tls_server().await;
    // localhost resolves and the certificate names it, but the issuer is 127.0.0.1.
    let asked = server.issuer().replace("127.0.0.1", "localhost");
    let out = validate_json(&asked, Some(&ca_of(&server)), &[]).await;
    assert_eq!(out.check("dns")["ok"], true, "{}", out.stdout);
    assert_eq!(out.check("tls")["ok"], true, "{}", out.stdout);
    let check = assert_fails(
        &out,
        "discovery_issuer",
        "but you asked for https://localhost:",
        &[],
    );
    assert!(
        check["fix"].as_str().unwrap().contains("byte for byte"),
        "{check}"
    );
    server.stop().await;
}

/// An RS256 JWS of `claims` with header kid `kid`, signed by `key`.
fn sign(key: &SigningKey, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = key.sign(input.as_bytes()).now_or_never().unwrap().unwrap();
    format!("{input}.{}", B64.encode(signature))
}

fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_tokens_fail_the_signature_or_kid_check() {
    let server = tls_server().await;
    let minted = server.mint("prod", "apply").await;
    let genuine = minted["token"].as_str().unwrap();
    let kid = minted["kid"].as_str().unwrap();
    let stranger = SigningKey::new(KeyPair::generate(KeySize::Rsa2048).unwrap());
    let claims = claims_of(genuine);

    // Signed by another key, under the kid of a published key.
    let forged = sign(&stranger, kid, &claims);
    // The genuine signature over a payload naming another workspace.
    let mut other = claims.clone();
    other["terraform_workspace_name"] = "staging".into();
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(other.to_string()),
        parts[2]
    );
    for token in [forged, tampered] {
        let file = token_file(server.dir.path(), &token);
        let out = validate_json(server.issuer(), Some(&ca_of(&server)), &["--token", &file]).await;
        assert_eq!(out.check("token_kid")["ok"], true, "{}", out.stdout);
        assert_fails(&out, "token_signature", "does not verify against kid", &[]);
    }

    // Signed by a key that was never published, under its own kid.
    let unknown = sign(&stranger, stranger.kid().as_str(), &claims);
    let file = token_file(server.dir.path(), &unknown);
    let out = validate_json(server.issuer(), Some(&ca_of(&server)), &["--token", &file]).await;
    assert_fails(
        &out,
        "token_kid",
        "is not in the JWKS",
        &["token_signature"],
    );
    // The claims of the tampered token are not TFE's: sub no longer matches the workspace.
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_for_another_audience_or_issuer_fails_its_claim_checks() {
    let server = tls_server().await;
    let minted = server.mint("prod", "plan").await;
    let file = token_file(server.dir.path(), minted["token"].as_str().unwrap());
    let ca = ca_of(&server);
    let out = validate_json(
        server.issuer(),
        Some(&ca),
        &["--token", &file, "--audience", "aws.workload.identity"],
    )
    .await;
    let check = assert_fails(
        &out,
        "token_audience",
        "but Vault's role expects \"aws.workload.identity\"",
        &[],
    );
    assert!(check["fix"].as_str().unwrap().contains("bound_audiences"));
    assert_eq!(out.check("token_signature")["ok"], true);

    // A token whose claims are not TFE's form (an extra claim, sub not matching), re-signed by
    // a stranger: the claim check names the form problem.
    let stranger = SigningKey::new(KeyPair::generate(KeySize::Rsa2048).unwrap());
    let mut claims = claims_of(minted["token"].as_str().unwrap());
    claims["admin"] = true.into();
    let file = token_file(
        server.dir.path(),
        &sign(&stranger, stranger.kid().as_str(), &claims),
    );
    let out = validate_json(server.issuer(), Some(&ca), &["--token", &file]).await;
    assert_fails(&out, "token_claims", "unexpected [\"admin\"]", &[]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_port_fails_tcp_and_skips_the_rest_but_is_unreachable() {
    let issuer = format!("https://127.0.0.1:{}", free_port());
    let out = validate_json(&issuer, None, &[]).await;
    let rest = &NETWORK_CHECKS[3..];
    assert_fails(&out, "tcp", "connection refused", rest);
    assert_eq!(names(&out.json()), NETWORK_CHECKS);

    // A token that is not a JWS fails on its own, whatever the network did.
    let args = ["--issuer", &issuer, "--format", "json", "--token", "-"];
    let out = validate(&args, Some("a.b.c".into())).await;
    assert_fails(
        &out,
        "token",
        "the header is not base64url",
        &TOKEN_CHECKS[1..],
    );

    let out = validate_json(&issuer, None, &["--expect-unreachable"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.check("unreachable")["detail"]
            .as_str()
            .unwrap()
            .contains("connection refused")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_unreachable_fails_where_discovery_answers_and_passes_behind_the_allow_list() {
    let server = tls_server().await;
    let ca = ca_of(&server);
    let out = validate_json(server.issuer(), Some(&ca), &["--expect-unreachable"]).await;
    assert_fails(&out, "unreachable", "discovery answered 200", &[]);

    for tls in [true, false] {
        let refusing = TestServer::start(Options {
            tls,
            discovery_toml: "allow = [\"10.255.0.0/16\"]\n".into(),
            ..Default::default()
        })
        .await;
        let ca = refusing
            .pki
            .as_ref()
            .map(|p| p.ca.to_str().unwrap().to_owned());
        let out = validate_json(refusing.issuer(), ca.as_deref(), &["--expect-unreachable"]).await;
        assert_eq!(out.code, 0, "tls {tls}: {out:?}");
        let detail = out.check("unreachable")["detail"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            detail.contains("closed the connection before any answer"),
            "{detail}"
        );
        // Without the flag, the same vantage point fails at the step that was refused.
        let out = validate_json(refusing.issuer(), ca.as_deref(), &[]).await;
        assert_fails(
            &out,
            if tls { "tls" } else { "discovery" },
            "closed",
            &["jwks"],
        );
        refusing.stop().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_usage_exits_64() {
    for args in [
        vec!["--issuer", "https://x.example", "--audience", "a"],
        vec![
            "--issuer",
            "https://x.example",
            "--token",
            "-",
            "--expect-unreachable",
        ],
        vec![
            "--issuer",
            "https://x.example",
            "--ca-file",
            "/nonexistent/ca.pem",
        ],
        vec![
            "--issuer",
            "https://x.example",
            "--token",
            "/nonexistent/token",
        ],
        vec!["--ca-file", "x"],
    ] {
        let out = validate(&args, None).await;
        assert_eq!(out.code, 64, "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_issuer_url_skips_every_network_check() {
    let out = validate_json("tfe-oidc.internal:8443", None, &[]).await;
    assert_fails(
        &out,
        "issuer_url",
        "does not start with https://",
        &NETWORK_CHECKS[1..],
    );
}

// ---------------------------------------------------------------------------------------------
// Crafted documents (FakeIssuer): what tfe-oidc itself never serves.
// ---------------------------------------------------------------------------------------------

fn rsa_jwk(kid: Option<&str>, n: String) -> Value {
    let jwk = PublicJwk {
        n,
        e: "AQAB".into(),
    };
    let kid = kid.map_or_else(|| jwk.thumbprint().to_string(), str::to_owned);
    json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": jwk.n, "e": jwk.e})
}

fn real_jwk() -> Value {
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    rsa_jwk(None, public_jwk(&pair).n)
}

/// A fake issuer on plain HTTP (loopback) serving tfe-oidc's discovery document and `keys` as
/// its JWKS, its clock `clock_offset` seconds ahead.
async fn fake(keys: Vec<Value>, clock_offset: i64) -> (FakeIssuer, String) {
    let fake = FakeIssuer::start(|addr| {
        let issuer = format!("http://{addr}");
        let metadata = ProviderMetadata::new(&issuer);
        FakeDocuments {
            routes: vec![
                (
                    CONFIGURATION_PATH.into(),
                    serde_json::to_string(&metadata).unwrap(),
                ),
                (JWKS_PATH.into(), json!({ "keys": keys }).to_string()),
            ],
            clock_offset,
            tls: None,
        }
    })
    .await;
    let issuer = format!("http://{}", fake.addr);
    (fake, issuer)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_with_a_short_key_or_a_foreign_kid_fails_jwks_keys() {
    let short = rsa_jwk(None, B64.encode([0xc5u8; 128]));
    let (_fake, issuer) = fake(vec![real_jwk(), short], 0).await;
    let out = validate_json(&issuer, None, &[]).await;
    assert_fails(&out, "jwks_keys", "key 1: kid", &[]);
    assert!(
        out.check("jwks_keys")["detail"]
            .as_str()
            .unwrap()
            .contains("1024-bit modulus")
    );

    let mut renamed = real_jwk();
    renamed["kid"] = "k1".into();
    let (_fake, issuer) = fake(vec![renamed], 0).await;
    let out = validate_json(&issuer, None, &[]).await;
    assert_fails(&out, "jwks_keys", "kid k1 is not its key's thumbprint", &[]);
    assert_eq!(out.check("jwks")["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_clock_off_by_minutes_fails_and_by_seconds_warns() {
    let (_fake, issuer) = fake(vec![real_jwk()], 180).await;
    let out = validate_json(&issuer, None, &[]).await;
    assert_fails(
        &out,
        "clock",
        "ahead of this host's: more than Vault's 60s",
        &[],
    );

    let (_fake, issuer) = fake(vec![real_jwk()], -30).await;
    let out = validate_json(&issuer, None, &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let check = out.check("clock");
    assert!(
        check["detail"].as_str().unwrap().contains("behind"),
        "{check}"
    );
    assert!(
        check["fix"].as_str().unwrap().contains("NTP"),
        "a warning carries its fix: {check}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_named_as_expired() {
    use rcgen::{CertificateParams, KeyPair as CertKey};
    common::init_crypto();
    let ca_key = CertKey::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = CertKey::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let config = Arc::new(config);
    let fake = FakeIssuer::start(|_| FakeDocuments {
        tls: Some(config),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let issuer = format!("https://127.0.0.1:{}", fake.addr.port());
    let out = validate_json(&issuer, ca.to_str(), &[]).await;
    let check = assert_fails(&out, "tls", "the certificate expired", &["discovery"]);
    assert!(check["fix"].as_str().unwrap().contains("renew"), "{check}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_that_demands_client_certificates_is_named_with_vaults_limit() {
    let server = TestServer::start(Options {
        tls: true,
        client_ca: true,
        ..Default::default()
    })
    .await;
    let out = validate_json(server.issuer(), Some(&ca_of(&server)), &[]).await;
    // TLS 1.3: the handshake completes on the client's side; the refusal comes with the first
    // read, so it is the discovery fetch that names it.
    let check = assert_fails(&out, "discovery", "demands a client certificate", &["jwks"]);
    assert!(
        check["fix"]
            .as_str()
            .unwrap()
            .contains("cannot present a client certificate"),
        "{check}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn module_test_and_stacks_tokens_pass_with_their_own_claim_sets() {
    let server = tls_server().await;
    for body in [
        common::module_test_body("acme", "vpc"),
        common::stack_body("production", "apply"),
    ] {
        let minted = server.mint_body(&body).await;
        let file = token_file(server.dir.path(), minted["token"].as_str().unwrap());
        let out = validate_json(server.issuer(), Some(&ca_of(&server)), &["--token", &file]).await;
        assert_eq!(out.code, 0, "{body}: {out:?}");
        let claims = out.check("token_claims");
        assert_eq!(claims["ok"], true, "{claims}");
    }
    server.stop().await;
}

/// `http://` at a port that speaks TLS names the cause: "this port speaks TLS: use https://".
#[tokio::test(flavor = "multi_thread")]
async fn plain_http_at_a_tls_port_says_use_https() {
    let server = tls_server().await;
    let issuer = server.issuer().replacen("https://", "http://", 1);
    let out = validate_json(&issuer, None, &[]).await;
    let check = assert_fails(
        &out,
        "discovery",
        "this port speaks TLS: use https://",
        &["discovery_issuer", "jwks_uri", "jwks"],
    );
    assert!(
        check["fix"].as_str().unwrap().contains("https://"),
        "{check}"
    );
}
