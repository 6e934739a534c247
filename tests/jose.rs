//! Tokens verified by JOSE implementations outside this crate (PyJWT and joserfc), which fetch
//! the JWKS from the discovery listener over HTTP and over HTTPS with a private CA.

mod common;

use common::{Options, TestServer, require_python_jose, verify_with_python};

async fn minted(server: &TestServer, count: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for i in 0..count {
        let phase = if i % 2 == 0 { "plan" } else { "apply" };
        tokens.push(
            server.mint("prod", phase).await["token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    tokens
}

#[tokio::test(flavor = "multi_thread")]
async fn python_jose_verifies_tokens_against_the_served_jwks_over_http() {
    if !require_python_jose() {
        return;
    }
    let server = TestServer::start(Options::default()).await;
    let tokens = minted(&server, 4).await;
    let jwks_url = server.discovery_url("/.well-known/jwks");
    let results = verify_with_python(
        &jwks_url,
        server.issuer(),
        "vault.workload.identity",
        None,
        &tokens,
    );
    for result in &results {
        assert_eq!(result["ok"], true, "{result}");
        assert_eq!(result["header"]["alg"], "RS256");
        assert_eq!(result["header"]["typ"], "JWT");
        assert_eq!(result["claims"]["iss"], server.issuer());
        let claims = &result["claims"];
        assert_eq!(
            claims["nbf"].as_u64().unwrap() + 5,
            claims["iat"].as_u64().unwrap()
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_jose_verifies_over_https_with_a_private_ca_and_rejects_a_tampered_token() {
    if !require_python_jose() {
        return;
    }
    let server = TestServer::start(Options {
        tls: true,
        ..Default::default()
    })
    .await;
    let mut tokens = minted(&server, 2).await;
    let mut parts: Vec<String> = tokens[0].split('.').map(str::to_owned).collect();
    parts[1] = parts[1].replacen('e', "f", 1);
    tokens.push(parts.join("."));
    let ca = server.pki.as_ref().unwrap().ca.clone();
    let jwks_url = server.discovery_url("/.well-known/jwks");
    assert!(jwks_url.starts_with("https://"));
    let results = verify_with_python(
        &jwks_url,
        server.issuer(),
        "vault.workload.identity",
        Some(&ca),
        &tokens,
    );
    assert_eq!(results[0]["ok"], true, "{}", results[0]);
    assert_eq!(results[1]["ok"], true, "{}", results[1]);
    assert_eq!(
        results[2]["ok"], false,
        "a tampered token must not verify: {}",
        results[2]
    );
    server.stop().await;
}
