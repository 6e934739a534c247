//! The discovery listener (docs/reference.md §3), over real loopback sockets and real TLS: the two documents
//! against hand-checked golden files, the JWKS's contents, the HTTP caching and method rules,
//! key rotation as seen by a client, TLS 1.2 and 1.3, the peer allow list and mTLS.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tfe_oidc::discovery::Documents;
use tfe_oidc::keys::{KeyInfo, KeySet, KeyState, Kid, PublicJwk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{
    Options, TestPki, TestServer, jwks_kids, module_test_body, require_tool, run_body, stack_body,
};

const CONFIGURATION: &str = "/.well-known/openid-configuration";
const JWKS: &str = "/.well-known/jwks";

/// The RFC 7638 §3.1 example key and its thumbprint.
const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
const RFC7638_E: &str = "AQAB";
const RFC7638_KID: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

/// The placeholder for the issuer in `tests/golden/openid-configuration.json`.
const ISSUER_PLACEHOLDER: &str = "${ISSUER}";

/// A golden file's bytes, without the final newline editors add.
fn golden(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden file {}: {e}", path.display()));
    text.strip_suffix('\n').unwrap_or(&text).to_owned()
}

/// RFC 7638 thumbprint of an RSA JWK, computed here rather than by the crate: SHA-256 over
/// the required members `e`, `kty`, `n` in lexicographic order, without whitespace.
fn rfc7638_thumbprint(n: &str, e: &str) -> String {
    let canonical = serde_json::to_string(&serde_json::json!({"e": e, "kty": "RSA", "n": n}))
        .expect("a JSON object serializes");
    B64.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> &str {
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// GET `path` on the discovery listener with an optional `If-None-Match`.
async fn get(server: &TestServer, path: &str, if_none_match: Option<&str>) -> reqwest::Response {
    let mut request = server.client().get(server.discovery_url(path));
    if let Some(tag) = if_none_match {
        request = request.header(IF_NONE_MATCH, tag);
    }
    request.send().await.unwrap()
}

/// The value of an unlabelled metric on the API listener's `/metrics`.
async fn metric(server: &TestServer, name: &str) -> u64 {
    let text = reqwest::get(server.api_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("metric {name} missing from /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// The kids of `GET /v1/keys` in `state`.
async fn kids_in_state(server: &TestServer, state: &str) -> Vec<String> {
    let listing: Value = reqwest::Client::new()
        .get(server.api_url("/v1/keys"))
        .bearer_auth(&server.tokens.all)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    listing["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["state"] == state)
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Golden documents
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn openid_configuration_is_served_byte_for_byte_as_the_golden_document() {
    let server = TestServer::start(Options::default()).await;
    let expected = golden("openid-configuration.json").replace(ISSUER_PLACEHOLDER, server.issuer());
    assert!(!expected.contains(ISSUER_PLACEHOLDER));

    let response = get(&server, CONFIGURATION, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let served = response.bytes().await.unwrap();
    assert_eq!(
        std::str::from_utf8(&served).unwrap(),
        expected,
        "served bytes differ from tests/golden/openid-configuration.json"
    );
    let served: Value = serde_json::from_slice(&served).unwrap();
    let expected: Value = serde_json::from_str(&expected).unwrap();
    assert_eq!(served, expected);
    assert_eq!(served["issuer"], server.issuer());
    assert_eq!(
        served["jwks_uri"],
        format!("{}/.well-known/jwks", server.issuer())
    );
    server.stop().await;
}

/// `claims_supported` is exactly the union of the claims of the three token kinds: a workspace
/// run, a module test and a Stacks deployment.
#[tokio::test(flavor = "multi_thread")]
async fn claims_supported_lists_exactly_the_claims_of_every_token_kind() {
    let server = TestServer::start(Options::default()).await;
    let configuration: Value = get(&server, CONFIGURATION, None)
        .await
        .json()
        .await
        .unwrap();
    let supported: BTreeSet<String> = configuration["claims_supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let mut issued = BTreeSet::new();
    for body in [
        run_body("acme", "prod", "apply"),
        module_test_body("acme", "vpc"),
        stack_body("production", "apply"),
    ] {
        let token = server.mint_body(&body).await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let payload = B64.decode(token.split('.').nth(1).unwrap()).unwrap();
        let claims: serde_json::Map<String, Value> = serde_json::from_slice(&payload).unwrap();
        issued.extend(claims.keys().cloned());
    }
    assert_eq!(supported, issued);
    assert_eq!(
        supported.len(),
        21,
        "16 run claims, and the 5 Stacks claims runs lack"
    );
    server.stop().await;
}

#[test]
fn jwks_of_the_rfc7638_example_key_renders_as_the_golden_document() {
    // The test's own thumbprint function agrees with RFC 7638's published example.
    assert_eq!(rfc7638_thumbprint(RFC7638_N, RFC7638_E), RFC7638_KID);
    let jwk = PublicJwk {
        n: RFC7638_N.into(),
        e: RFC7638_E.into(),
    };
    assert_eq!(jwk.thumbprint().as_str(), RFC7638_KID);
    // Built through serde, so that optional bookkeeping fields added to `KeyInfo` later take
    // their defaults: none of them may reach the JWKS.
    let key: KeyInfo = serde_json::from_value(serde_json::json!({
        "kid": RFC7638_KID,
        "state": "current",
        "created_at": 1_764_115_200u64,
        "activated_at": 1_764_115_200u64,
        "jwk": jwk,
    }))
    .unwrap();
    assert_eq!(key.state, KeyState::Current);
    assert_eq!(key.kid, Kid::parse(RFC7638_KID).unwrap());
    let set = KeySet { keys: vec![key] };
    let docs = Documents::render("https://tfe.example.com", &set);
    let expected = golden("jwks.json");
    assert_eq!(
        std::str::from_utf8(&docs.jwks.body).unwrap(),
        expected,
        "rendered JWKS differs from tests/golden/jwks.json"
    );
    let rendered: Value = serde_json::from_slice(&docs.jwks.body).unwrap();
    assert_eq!(rendered, serde_json::from_str::<Value>(&expected).unwrap());
    assert_eq!(docs.key_count, 1);

    let configuration =
        golden("openid-configuration.json").replace(ISSUER_PLACEHOLDER, "https://tfe.example.com");
    assert_eq!(
        std::str::from_utf8(&docs.configuration.body).unwrap(),
        configuration
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The served JWKS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn served_jwks_holds_next_and_current_with_public_members_only_and_thumbprint_kids() {
    let server = TestServer::start(Options::default()).await;
    let jwks = server.jwks().await;
    let object = jwks.as_object().unwrap();
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        ["keys"],
        "the JWKS has only `keys`"
    );
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(
        keys.len(),
        2,
        "next and current after a first start: {jwks}"
    );
    let exact: BTreeSet<&str> = ["kty", "use", "alg", "kid", "n", "e"].into();
    for key in keys {
        let members: BTreeSet<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(members, exact, "members of {key}");
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                key.get(private).is_none(),
                "private member {private} served"
            );
        }
        assert_eq!(key["kty"], "RSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "RS256");
        assert_eq!(key["e"], "AQAB");
        let (n, e) = (key["n"].as_str().unwrap(), key["e"].as_str().unwrap());
        assert_eq!(B64.decode(n).unwrap().len() * 8, 2048, "rsa_bits default");
        let kid = key["kid"].as_str().unwrap();
        assert_eq!(kid.len(), 43);
        assert_eq!(kid, rfc7638_thumbprint(n, e), "kid is not the thumbprint");
    }
    let served = jwks_kids(&jwks);
    let (current, next) = (
        kids_in_state(&server, "current").await,
        kids_in_state(&server, "next").await,
    );
    assert_eq!((current.len(), next.len()), (1, 1));
    assert!(served.contains(&current[0]) && served.contains(&next[0]));
    assert_ne!(current[0], next[0]);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. HTTP: headers, caching, methods, routes
// ---------------------------------------------------------------------------------------------

/// Content-Type, strong ETag, 304 on a match, 200 on a mismatch, Cache-Control: for one document.
async fn check_document_caching(server: &TestServer, path: &str, cache_control: &str) -> String {
    let response = get(server, path, None).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    assert_eq!(
        header(&response, CONTENT_TYPE),
        "application/json",
        "{path}"
    );
    assert_eq!(header(&response, CACHE_CONTROL), cache_control, "{path}");
    let etag = header(&response, ETAG).to_owned();
    assert!(!etag.starts_with("W/"), "{path}: weak ETag {etag}");
    assert!(
        etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
        "{path}: ETag {etag} is not a quoted entity tag"
    );
    let body = response.bytes().await.unwrap();
    assert!(!body.is_empty());

    let again = get(server, path, None).await;
    assert_eq!(header(&again, ETAG), etag, "{path}: ETag not stable");

    for matching in [etag.clone(), format!("\"other\", {etag}")] {
        let cached = get(server, path, Some(&matching)).await;
        assert_eq!(
            cached.status(),
            StatusCode::NOT_MODIFIED,
            "{path}: If-None-Match {matching}"
        );
        assert_eq!(header(&cached, ETAG), etag, "{path}: 304 ETag");
        assert_eq!(header(&cached, CACHE_CONTROL), cache_control, "{path}: 304");
        assert!(cached.bytes().await.unwrap().is_empty(), "{path}: 304 body");
    }

    let stale = get(server, path, Some("\"0123456789abcdef\"")).await;
    assert_eq!(stale.status(), StatusCode::OK, "{path}: other ETag");
    assert_eq!(header(&stale, ETAG), etag);
    assert_eq!(stale.bytes().await.unwrap(), body);
    etag
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_carry_json_type_strong_etags_304_and_cache_control() {
    let server = TestServer::start(Options {
        discovery_toml: "jwks_max_age = \"2m\"\n".into(),
        ..Default::default()
    })
    .await;
    let jwks_tag = check_document_caching(&server, JWKS, "public, max-age=120").await;
    let config_tag = check_document_caching(&server, CONFIGURATION, "public, max-age=3600").await;
    assert_ne!(jwks_tag, config_tag);
    // One document's ETag does not validate the other.
    let crossed = get(&server, JWKS, Some(&config_tag)).await;
    assert_eq!(crossed.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_cache_control_defaults_to_five_minutes() {
    let server = TestServer::start(Options::default()).await;
    let response = get(&server, JWKS, None).await;
    assert_eq!(header(&response, CACHE_CONTROL), "public, max-age=300");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn head_returns_the_get_headers_without_a_body() {
    let server = TestServer::start(Options {
        discovery_toml: "jwks_max_age = \"2m\"\n".into(),
        ..Default::default()
    })
    .await;
    for (path, cache_control) in [
        (JWKS, "public, max-age=120"),
        (CONFIGURATION, "public, max-age=3600"),
    ] {
        let got = get(&server, path, None).await;
        let (get_tag, get_len) = (
            header(&got, ETAG).to_owned(),
            got.bytes().await.unwrap().len(),
        );
        let head = server
            .client()
            .head(server.discovery_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK, "HEAD {path}");
        assert_eq!(header(&head, CONTENT_TYPE), "application/json");
        assert_eq!(header(&head, CACHE_CONTROL), cache_control);
        assert_eq!(header(&head, ETAG), get_tag);
        if let Some(length) = head.headers().get(reqwest::header::CONTENT_LENGTH) {
            assert_eq!(length.to_str().unwrap(), get_len.to_string(), "HEAD {path}");
        }
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD {path} body");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn other_methods_on_discovery_routes_are_405() {
    let server = TestServer::start(Options::default()).await;
    for path in [JWKS, CONFIGURATION, "/healthz"] {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let response = server
                .client()
                .request(method.clone(), server.discovery_url(path))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            let allow = response
                .headers()
                .get(reqwest::header::ALLOW)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            assert!(allow.contains("GET"), "{method} {path}: Allow {allow:?}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_on_the_discovery_listener_are_404() {
    let server = TestServer::start(Options::default()).await;
    for path in [
        "/",
        "/.well-known/jwks.json",
        "/.well-known/jwks/",
        "/.well-known/openid-configuration/",
        "/.well-known/",
        "/jwks",
        "/v1/tokens",
        "/v1/keys",
        "/metrics",
        "/readyz",
    ] {
        let response = get(&server, path, None).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "GET {path}");
        let post = server
            .client()
            .post(server.discovery_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), StatusCode::NOT_FOUND, "POST {path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_on_the_discovery_listener_answers_ok() {
    let server = TestServer::start(Options::default()).await;
    let response = get(&server, "/healthz", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap().trim_end(), "ok");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_rotation_publishes_three_keys_under_a_new_jwks_etag() {
    let server = TestServer::start(Options::default()).await;
    let before = get(&server, JWKS, None).await;
    let old_tag = header(&before, ETAG).to_owned();
    let old_kids = jwks_kids(&before.json().await.unwrap());
    let old_current = kids_in_state(&server, "current").await.remove(0);
    let old_next = kids_in_state(&server, "next").await.remove(0);
    let config_tag = header(&get(&server, CONFIGURATION, None).await, ETAG).to_owned();

    let rotated = reqwest::Client::new()
        .post(server.api_url("/v1/keys/rotate?force=true"))
        .bearer_auth(&server.tokens.all)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::OK);

    // A client holding the old JWKS gets the new one, not a 304.
    let after = get(&server, JWKS, Some(&old_tag)).await;
    assert_eq!(after.status(), StatusCode::OK);
    let new_tag = header(&after, ETAG).to_owned();
    assert_ne!(new_tag, old_tag);
    let jwks: Value = after.json().await.unwrap();
    let kids = jwks_kids(&jwks);
    assert_eq!(kids.len(), 3, "{jwks}");
    assert!(kids.is_superset(&old_kids), "a rotation unpublished a key");
    assert_eq!(kids_in_state(&server, "current").await, [old_next]);
    assert_eq!(kids_in_state(&server, "retired").await, [old_current]);
    for key in jwks["keys"].as_array().unwrap() {
        assert_eq!(
            key["kid"].as_str().unwrap(),
            rfc7638_thumbprint(key["n"].as_str().unwrap(), key["e"].as_str().unwrap())
        );
    }
    let cached = get(&server, JWKS, Some(&new_tag)).await;
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    // The configuration does not depend on the keys: its caches stay valid.
    let config = get(&server, CONFIGURATION, Some(&config_tag)).await;
    assert_eq!(config.status(), StatusCode::NOT_MODIFIED);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. TLS
// ---------------------------------------------------------------------------------------------

fn tls_server() -> Options {
    Options {
        tls: true,
        ..Default::default()
    }
}

fn roots(pki: &TestPki) -> rustls::RootCertStore {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca).unwrap())
        .unwrap();
    roots
}

/// A rustls client restricted to one protocol version, trusting the test CA.
fn client_config(
    pki: &TestPki,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots(pki))
    .with_no_client_auth()
}

/// Connects with `config`, sends `GET /healthz` over HTTP/1.1 and returns the negotiated version
/// and the raw response.
async fn tls_healthz(
    server: &TestServer,
    config: rustls::ClientConfig,
) -> std::io::Result<(rustls::ProtocolVersion, String)> {
    let tcp = tokio::net::TcpStream::connect(
        server.running.discovery_addr.expect("discovery is enabled"),
    )
    .await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let version = tls.get_ref().1.protocol_version().unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok((version, response))
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_over_https_serves_both_documents_to_a_client_trusting_the_test_ca() {
    let server = TestServer::start(tls_server()).await;
    assert!(server.issuer().starts_with("https://127.0.0.1:"));
    let configuration: Value = get(&server, CONFIGURATION, None)
        .await
        .json()
        .await
        .unwrap();
    let expected: Value = serde_json::from_str(
        &golden("openid-configuration.json").replace(ISSUER_PLACEHOLDER, server.issuer()),
    )
    .unwrap();
    assert_eq!(configuration, expected);
    let jwks = server.jwks().await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    // The jwks_uri the document advertises is itself fetchable.
    let by_uri = server
        .client()
        .get(configuration["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(by_uri.status(), StatusCode::OK);
    assert_eq!(by_uri.json::<Value>().await.unwrap(), jwks);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_trust_the_test_ca_fails_the_handshake() {
    let server = TestServer::start(tls_server()).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::new(other_dir.path());
    let stranger = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(other.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let error = stranger
        .get(server.discovery_url(JWKS))
        .send()
        .await
        .expect_err("a client trusting another CA must not get an answer");
    assert!(error.status().is_none(), "{error:?}");
    assert!(
        // Both test CAs have the same subject, so rustls reports a bad signature rather than
        // an unknown issuer: either way, the server's certificate does not verify.
        format!("{error:?}").contains("InvalidCertificate"),
        "expected a certificate verification failure: {error:?}"
    );
    // Same with a raw rustls client, which shows the handshake itself fails.
    let refused = tls_healthz(&server, client_config(&other, &rustls::version::TLS13)).await;
    assert!(refused.is_err(), "{refused:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_2_and_tls_1_3_both_negotiate_with_a_rustls_client() {
    let server = TestServer::start(tls_server()).await;
    let pki = server.pki.as_ref().unwrap();
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let (negotiated, response) = tls_healthz(&server, client_config(pki, version))
            .await
            .unwrap_or_else(|e| panic!("{expected:?}: {e}"));
        assert_eq!(negotiated, expected);
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "{expected:?}: {response}"
        );
        assert!(
            response.trim_end().ends_with("ok"),
            "{expected:?}: {response}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_2_and_tls_1_3_both_negotiate_with_openssl_s_client() {
    let Some(openssl) = require_tool("openssl") else {
        return;
    };
    let server = TestServer::start(tls_server()).await;
    let ca = server.pki.as_ref().unwrap().ca.clone();
    let addr = server
        .running
        .discovery_addr
        .expect("discovery is enabled")
        .to_string();
    for (flag, expected) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (openssl, ca, addr) = (openssl.clone(), ca.clone(), addr.clone());
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(openssl)
                .args(["s_client", "-connect", &addr, flag, "-brief"])
                .arg("-CAfile")
                .arg(&ca)
                .args(["-verify_return_error", "-verify_ip", "127.0.0.1"])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "openssl {flag}: {text}");
        assert!(
            text.contains(&format!("Protocol version: {expected}")),
            "openssl {flag}: {text}"
        );
        assert!(text.contains("Verification: OK"), "openssl {flag}: {text}");
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Allow list
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_outside_the_allow_list_is_closed_without_an_answer_and_counted() {
    let server = TestServer::start(Options {
        discovery_toml: "allow = [\"10.255.0.0/16\"]\n".into(),
        ..Default::default()
    })
    .await;
    let refused_before = metric(&server, "tfe_oidc_discovery_refused_total").await;

    let error = get_error(&server, JWKS).await;
    assert!(error.status().is_none(), "got an HTTP answer: {error:?}");

    // At the socket: whatever we send, not one byte comes back before the connection ends.
    let mut tcp = tokio::net::TcpStream::connect(
        server.running.discovery_addr.expect("discovery is enabled"),
    )
    .await
    .unwrap();
    let _ = tcp
        .write_all(b"GET /.well-known/jwks HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("the refused connection was not closed");
    assert!(buf.is_empty(), "refused peer got bytes: {buf:?} ({read:?})");

    let refused_after = metric(&server, "tfe_oidc_discovery_refused_total").await;
    assert!(
        refused_after >= refused_before + 2,
        "refusals not counted: {refused_before} -> {refused_after}"
    );
    // The API listener has no allow list and still answers.
    let health = reqwest::get(server.api_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    server.stop().await;
}

async fn get_error(server: &TestServer, path: &str) -> reqwest::Error {
    server
        .client()
        .get(server.discovery_url(path))
        .send()
        .await
        .expect_err("a peer outside the allow list must get no HTTP answer")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_inside_the_allow_list_is_served() {
    let server = TestServer::start(Options {
        discovery_toml: "allow = [\"10.255.0.0/16\", \"127.0.0.1/32\"]\n".into(),
        ..Default::default()
    })
    .await;
    for path in [JWKS, CONFIGURATION, "/healthz"] {
        let response = get(&server, path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    assert_eq!(metric(&server, "tfe_oidc_discovery_refused_total").await, 0);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. mTLS
// ---------------------------------------------------------------------------------------------

fn mtls_server() -> Options {
    Options {
        tls: true,
        client_ca: true,
        ..Default::default()
    }
}

fn client_with_identity(server: &TestServer, cert: &Path, key: &Path) -> reqwest::Client {
    let pki = server.pki.as_ref().unwrap();
    let mut pem = std::fs::read(cert).unwrap();
    pem.extend(std::fs::read(key).unwrap());
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_client_ca_a_client_certificate_from_that_ca_is_served() {
    let server = TestServer::start(mtls_server()).await;
    let pki = server.pki.as_ref().unwrap();
    let client = client_with_identity(&server, &pki.client_cert, &pki.client_key);
    for path in [JWKS, CONFIGURATION] {
        let response = client.get(server.discovery_url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&response, CONTENT_TYPE), "application/json");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_client_ca_a_client_without_a_certificate_fails_the_handshake() {
    let server = TestServer::start(mtls_server()).await;
    let pki = server.pki.as_ref().unwrap();
    // reqwest, trusting the server but offering no certificate.
    let error = server
        .client()
        .get(server.discovery_url(JWKS))
        .send()
        .await
        .expect_err("a client without a certificate must not be served");
    assert!(error.status().is_none(), "{error:?}");
    // rustls at each version: no HTTP response ever comes back.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let outcome = tls_healthz(&server, client_config(pki, version)).await;
        match outcome {
            Err(e) => assert!(
                format!("{e:?}").contains("CertificateRequired")
                    || format!("{e:?}").contains("HandshakeFailure"),
                "{version:?}: unexpected error {e:?}"
            ),
            Ok((_, response)) => panic!("{version:?}: served without a certificate: {response}"),
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_client_ca_a_certificate_from_another_ca_fails_the_handshake() {
    let server = TestServer::start(mtls_server()).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::new(other_dir.path());
    let client = client_with_identity(&server, &other.client_cert, &other.client_key);
    let error = client
        .get(server.discovery_url(JWKS))
        .send()
        .await
        .expect_err("a certificate from another CA must not be accepted");
    assert!(error.status().is_none(), "{error:?}");
    server.stop().await;
}

/// The provider metadata example of docs/reference.md (section 3.3) is the golden document with
/// an example issuer: a claim added to the service but not to the docs fails here.
#[test]
fn the_reference_documents_the_metadata_the_service_serves() {
    let reference =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reference.md"))
            .unwrap();
    let section = &reference[reference.find("### 3.3 Provider metadata").unwrap()..];
    let start = section.find("```json\n").unwrap() + "```json\n".len();
    let end = start + section[start..].find("```").unwrap();
    let documented: Value = serde_json::from_str(&section[start..end]).unwrap();
    let issuer = documented["issuer"].as_str().unwrap();
    let served: Value = serde_json::from_str(
        &golden("openid-configuration.json").replace(ISSUER_PLACEHOLDER, issuer),
    )
    .unwrap();
    assert_eq!(documented, served);
}
