//! Module-test and Stacks deployment tokens through `POST /v1/tokens`, seen from outside: each
//! kind's exact claims, `sub`, `nbf` and TTL bounds; every new name field refusing claim
//! injection by name; a Stacks `sub` over 127 characters; mixed kinds; and the metrics and audit
//! trail staying bounded.

use crate::common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{Options, TestServer, module_test_body, run_body, stack_body};
use serde_json::{Value, json};
use tfe_oidc::keys::{Clock, SystemClock};

fn claims(answer: &Value) -> Value {
    let token = answer["token"].as_str().expect("a token");
    serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

/// The member names of a token's payload, in the order they were signed.
fn claim_order(answer: &Value) -> Vec<String> {
    let token = answer["token"].as_str().unwrap();
    let payload = B64.decode(token.split('.').nth(1).unwrap()).unwrap();
    let map: serde_json::Map<String, Value> = serde_json::from_slice(&payload).unwrap();
    // serde_json's Map is sorted; read the order from the text itself.
    let text = String::from_utf8(payload).unwrap();
    let mut names: Vec<(usize, String)> = map
        .keys()
        .map(|k| (text.find(&format!("\"{k}\":")).unwrap(), k.clone()))
        .collect();
    names.sort();
    names.into_iter().map(|(_, k)| k).collect()
}

/// A 400 naming `field`; returns the message.
async fn refused(server: &TestServer, body: &Value, field: Option<&str>) -> String {
    let (status, answer) = server.post_token(body).await;
    assert_eq!(status, 400, "{body}: {answer}");
    assert_eq!(answer["error"], "invalid_request", "{answer}");
    assert_eq!(answer["field"].as_str(), field, "{body}: {answer}");
    answer["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_test_token_has_exactly_tfes_claims_in_tfes_order() {
    let server = TestServer::start(Options::default()).await;
    let before = SystemClock.now();
    let mut body = module_test_body("acme", "vpc");
    body["audience"] = "aws.workload.identity".into();
    let answer = server.mint_body(&body).await;
    let c = claims(&answer);
    let iat = c["iat"].as_u64().unwrap();
    assert!(before <= iat && iat <= SystemClock.now());
    let expected = json!({
        "jti": answer["jti"], "iss": server.issuer(), "aud": "aws.workload.identity",
        "iat": iat, "nbf": iat - 30, "exp": iat + 600,
        "sub": "organization:acme:module:vpc:operation:test_run",
        "terraform_run_phase": "plan",
        "terraform_organization_id": "org-GRNbCjYNpBB6NEH9",
        "terraform_organization_name": "acme",
        "terraform_run_id": "trun-KFg8DSiRz4E37mdJ",
    });
    assert_eq!(c, expected, "TFE's module-test claims and no other");
    assert_eq!(
        claim_order(&answer),
        [
            "jti",
            "iss",
            "aud",
            "iat",
            "nbf",
            "exp",
            "sub",
            "terraform_run_phase",
            "terraform_organization_id",
            "terraform_organization_name",
            "terraform_run_id"
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stacks_token_has_exactly_tfes_claims_in_tfes_order() {
    let server = TestServer::start(Options::default()).await;
    let answer = server.mint_body(&stack_body("production", "apply")).await;
    let c = claims(&answer);
    let iat = c["iat"].as_u64().unwrap();
    let expected = json!({
        "jti": answer["jti"], "iss": server.issuer(), "aud": "vault.workload.identity",
        "iat": iat, "nbf": iat - 5, "exp": iat + 2 * 3600,
        "sub": "organization:acme:project:Default Project:stack:network:deployment:production:operation:apply",
        "terraform_operation": "apply",
        "terraform_stack_deployment_name": "production",
        "terraform_stack_id": "st-Ab12Cd34Ef56Gh78",
        "terraform_stack_name": "network",
        "terraform_project_id": "prj-vegSA59s1XPwMr2t",
        "terraform_project_name": "Default Project",
        "terraform_organization_id": "org-GRNbCjYNpBB6NEH9",
        "terraform_organization_name": "acme",
        "terraform_plan_id": "sp-Zx98Yw76Vu54Ts32",
    });
    assert_eq!(c, expected, "TFE's Stacks claims and no other");
    let order = claim_order(&answer);
    assert_eq!(
        order[7..],
        [
            "terraform_operation",
            "terraform_stack_deployment_name",
            "terraform_stack_id",
            "terraform_stack_name",
            "terraform_project_id",
            "terraform_project_name",
            "terraform_organization_id",
            "terraform_organization_name",
            "terraform_plan_id"
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn module_test_ttls_default_to_600s_and_stay_within_300_to_1800s() {
    let server = TestServer::start(Options::default()).await;
    for (ttl, seconds) in [("5m", 300), ("20m", 1200), ("30m", 1800)] {
        let mut body = module_test_body("acme", "vpc");
        body["ttl"] = ttl.into();
        let c = claims(&server.mint_body(&body).await);
        assert_eq!(
            c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
            seconds
        );
    }
    for ttl in ["299s", "30m 1s", "2h"] {
        let mut body = module_test_body("acme", "vpc");
        body["ttl"] = ttl.into();
        let message = refused(&server, &body, Some("ttl")).await;
        assert!(message.contains("module test"), "{ttl}: {message}");
    }
    server.stop().await;

    // A tokens.max_ttl under 30m caps module tests too (and a default above it).
    let server = TestServer::start(Options {
        extra_toml: "[tokens]\ndefault_ttl = \"5m\"\nmax_ttl = \"8m\"\n".into(),
        ..Default::default()
    })
    .await;
    let c = claims(&server.mint_body(&module_test_body("acme", "vpc")).await);
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 480);
    let mut body = module_test_body("acme", "vpc");
    body["ttl"] = "10m".into();
    let message = refused(&server, &body, Some("ttl")).await;
    assert!(message.contains("tokens.max_ttl"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn injection_into_every_new_name_field_is_refused_naming_the_field() {
    let server = TestServer::start(Options::default()).await;
    let attempts = [
        "vpc:operation:test_run",
        "x:*",
        "prod*",
        "a\u{0}b",
        "tab\there",
        "\u{0430}cme",
        "",
    ];
    let fields = [
        (module_test_body("acme", "vpc"), "module", "module.name"),
        (stack_body("production", "plan"), "stack", "stack.name"),
        (
            stack_body("production", "plan"),
            "deployment",
            "deployment.name",
        ),
        (stack_body("production", "plan"), "project", "project.name"),
        (
            module_test_body("acme", "vpc"),
            "organization",
            "organization.name",
        ),
    ];
    for (body, object, field) in fields {
        for name in attempts {
            let mut body = body.clone();
            body[object]["name"] = name.into();
            let message = refused(&server, &body, Some(field)).await;
            assert!(
                !message.starts_with(field),
                "the field is not repeated: {message}"
            );
        }
    }
    // IDs carry their kind's prefix.
    let ids = [
        (
            module_test_body("acme", "vpc"),
            "run",
            "run-KFg8DSiRz4E37mdJ",
            "run.id",
        ),
        (
            stack_body("d", "plan"),
            "stack",
            "ws-Ab12Cd34Ef56Gh78",
            "stack.id",
        ),
        (
            stack_body("d", "plan"),
            "plan",
            "run-Zx98Yw76Vu54Ts32",
            "plan.id",
        ),
        (stack_body("d", "plan"), "plan", "sp-a:b", "plan.id"),
    ];
    for (body, object, id, field) in ids {
        let mut body = body.clone();
        body[object]["id"] = id.into();
        refused(&server, &body, Some(field)).await;
    }
    let mut body = module_test_body("acme", "vpc");
    body["run"]["phase"] = "apply".into();
    refused(&server, &body, Some("run.phase")).await;
    let mut body = stack_body("d", "plan");
    body["operation"] = "destroy".into();
    refused(&server, &body, Some("operation")).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stacks_sub_over_127_characters_is_refused_naming_the_limit() {
    let server = TestServer::start(Options::default()).await;
    let short = server.mint_body(&stack_body("d", "apply")).await;
    let base = claims(&short)["sub"].as_str().unwrap().len();
    let fits = "d".repeat(1 + 127 - base);
    let answer = server.mint_body(&stack_body(&fits, "apply")).await;
    assert_eq!(claims(&answer)["sub"].as_str().unwrap().len(), 127);
    let message = refused(&server, &stack_body(&format!("{fits}d"), "apply"), None).await;
    assert!(
        message.contains("127") && message.contains("128"),
        "{message}"
    );
    assert!(message.contains("deployment.name"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn members_of_two_kinds_are_refused_naming_the_member() {
    let server = TestServer::start(Options::default()).await;
    let run = run_body("acme", "prod", "plan");
    let module = module_test_body("acme", "vpc");
    let stack = stack_body("production", "plan");
    let with = |base: &Value, key: &str, value: &Value| {
        let mut body = base.clone();
        body[key] = value.clone();
        body
    };
    let cases = [
        (with(&module, "workspace", &run["workspace"]), "workspace"),
        (with(&module, "project", &run["project"]), "project"),
        (with(&module, "stack", &stack["stack"]), "stack"),
        (with(&module, "plan", &stack["plan"]), "plan"),
        (with(&stack, "workspace", &run["workspace"]), "workspace"),
        (with(&stack, "run", &run["run"]), "run"),
        (with(&run, "deployment", &stack["deployment"]), "deployment"),
        (with(&run, "operation", &stack["operation"]), "operation"),
        (with(&run, "module", &module["module"]), "project"),
    ];
    for (body, field) in cases {
        let message = refused(&server, &body, Some(field)).await;
        assert!(message.contains(field), "{message}");
    }
    // Strict bodies still: an unknown member, in any kind, is refused by name.
    refused(
        &server,
        &with(&stack, "component", &json!("x")),
        Some("component"),
    )
    .await;
    let mut body = module.clone();
    body["module"]["version"] = "1.0.0".into();
    refused(&server, &body, Some("module.version")).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_tokens_by_bounded_phase_and_kind_and_audit_names_each_sub() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = TestServer::start(Options {
        extra_toml: format!("[audit]\npath = {audit:?}\n"),
        ..Default::default()
    })
    .await;
    server.mint("prod", "apply").await;
    server.mint_body(&module_test_body("acme", "vpc")).await;
    server.mint_body(&stack_body("production", "apply")).await;
    server.mint_body(&stack_body("production", "plan")).await;
    let text = server
        .client()
        .get(server.api_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tfe_oidc_tokens_issued_total{phase=\"plan\"} 2",
        "tfe_oidc_tokens_issued_total{phase=\"apply\"} 2",
        "tfe_oidc_tokens_issued_by_kind_total{kind=\"run\"} 1",
        "tfe_oidc_tokens_issued_by_kind_total{kind=\"module_test\"} 1",
        "tfe_oidc_tokens_issued_by_kind_total{kind=\"stack\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let subs: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["sub"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(subs[1], "organization:acme:module:vpc:operation:test_run");
    assert!(subs[2].contains(":stack:network:deployment:production:operation:apply"));
    server.stop().await;
}
