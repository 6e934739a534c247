//! Tokens verified by JOSE implementations outside this crate (PyJWT and joserfc), which fetch
//! the JWKS from the discovery listener over HTTP and over HTTPS with a private CA, and check
//! every token against TFE's shape of its kind as `verify.py` writes it out.

use crate::common;

use common::{
    Options, TestServer, module_test_body, require_python_jose, run_body, stack_body,
    verify_with_python,
};
use serde_json::{Value, json};

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

/// Each kind of token, verified by PyJWT and joserfc and checked against TFE's shape of that kind
/// by `verify.py`, then compared claim for claim with the documented shapes.
#[tokio::test(flavor = "multi_thread")]
async fn python_jose_verifies_every_token_kind_claim_for_claim() {
    if !require_python_jose() {
        return;
    }
    let server = TestServer::start(Options::default()).await;
    let requests = [
        ("run", run_body("acme", "prod", "apply")),
        ("module_test", module_test_body("acme", "vpc")),
        ("stack", stack_body("production", "plan")),
    ];
    let mut answers = Vec::new();
    for (_, body) in &requests {
        answers.push(server.mint_body(body).await);
    }
    let tokens: Vec<String> = answers
        .iter()
        .map(|a| a["token"].as_str().unwrap().to_owned())
        .collect();
    let jwks_url = server.discovery_url("/.well-known/jwks");
    let results = verify_with_python(
        &jwks_url,
        server.issuer(),
        "vault.workload.identity",
        None,
        &tokens,
    );
    for (((kind, _), answer), result) in requests.iter().zip(&answers).zip(&results) {
        assert_eq!(result["ok"], true, "{kind}: {result}");
        assert_eq!(result["kind"], *kind, "{result}");
        let expected = expected_claims(kind, server.issuer(), answer);
        assert_eq!(
            result["claims"], expected,
            "{kind}: every claim, and no other"
        );
    }
    server.stop().await;
}

/// The claims TFE's documentation gives each kind, for the request bodies of `common`.
fn expected_claims(kind: &str, issuer: &str, answer: &Value) -> Value {
    let (iat, exp) = (
        answer["issued_at"].as_u64().unwrap(),
        answer["expires_at"].as_u64().unwrap(),
    );
    let mut claims = json!({
        "jti": answer["jti"], "iss": issuer, "aud": "vault.workload.identity",
        "iat": iat, "exp": exp, "nbf": iat - 5,
        "terraform_organization_id": "org-GRNbCjYNpBB6NEH9",
        "terraform_organization_name": "acme",
    });
    let extra = match kind {
        "run" => json!({
            "sub": "organization:acme:project:Default Project:workspace:prod:run_phase:apply",
            "terraform_project_id": "prj-vegSA59s1XPwMr2t", "terraform_project_name": "Default Project",
            "terraform_workspace_id": "ws-mbsd5E3Ktt5Rg2Xm", "terraform_workspace_name": "prod",
            "terraform_full_workspace": "organization:acme:project:Default Project:workspace:prod",
            "terraform_run_id": "run-X3n1AUXNGWbfECsJ", "terraform_run_phase": "apply",
        }),
        "module_test" => json!({
            "sub": "organization:acme:module:vpc:operation:test_run", "nbf": iat - 30,
            "terraform_run_phase": "plan", "terraform_run_id": "trun-KFg8DSiRz4E37mdJ",
        }),
        _ => json!({
            "sub": "organization:acme:project:Default Project:stack:network:deployment:production:operation:plan",
            "terraform_operation": "plan", "terraform_stack_deployment_name": "production",
            "terraform_stack_id": "st-Ab12Cd34Ef56Gh78", "terraform_stack_name": "network",
            "terraform_project_id": "prj-vegSA59s1XPwMr2t", "terraform_project_name": "Default Project",
            "terraform_plan_id": "sp-Zx98Yw76Vu54Ts32",
        }),
    };
    for (name, value) in extra.as_object().unwrap() {
        claims[name] = value.clone();
    }
    claims
}
