//! The API listener (docs/reference.md §4, without the credential exchange), driven over real loopback HTTP:
//! token issuance and its claims (docs/reference.md §6), every refusal of `POST /v1/tokens` with its exact
//! error code and field, the admin key routes (docs/reference.md §7), metrics, probes and the audit file.

use crate::common;

use std::collections::BTreeSet;
use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{Options, TestServer, jwks_kids, run_body};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use tfe_oidc::keys::{Clock, FakeClock, SystemClock};

const DEFAULT_TTL: u64 = 2 * 3600;
const MAX_TTL: u64 = 24 * 3600;
const JWKS_MAX_AGE: u64 = 300;
const RETIRE_MARGIN: u64 = 300;

/// The JSON of one base64url part of a compact JWS.
fn part(token: &str, index: usize) -> Value {
    let text = token.split('.').nth(index).expect("a compact JWS part");
    serde_json::from_slice(&B64.decode(text).expect("base64url without padding"))
        .expect("a JSON object")
}

/// The value of the sample `series` (name with its labels, exactly as exposed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.trim().parse().expect("a numeric sample"))
    })
}

/// The sum of every sample of the family `name` (any labels).
fn family_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

async fn metrics(server: &TestServer) -> String {
    let response = reqwest::get(server.api_url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// `GET /v1/keys` with the keys-only caller.
async fn key_list(server: &TestServer) -> Value {
    let response = server
        .client()
        .get(server.api_url("/v1/keys"))
        .bearer_auth(&server.tokens.keys_only)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn kid_in_state(list: &Value, state: &str) -> String {
    let keys = list["keys"].as_array().unwrap();
    let matching: Vec<&Value> = keys.iter().filter(|k| k["state"] == state).collect();
    assert_eq!(matching.len(), 1, "exactly one {state} key in {list}");
    matching[0]["kid"].as_str().unwrap().to_owned()
}

/// Posts a raw admin call with the keys-only caller; returns status, Content-Type and JSON body.
async fn admin_post(server: &TestServer, path: &str) -> (u16, String, Value) {
    let response = server
        .client()
        .post(server.api_url(path))
        .bearer_auth(&server.tokens.keys_only)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Checks the shape every API error shares: JSON `{"error","message","field"?}` and nothing else.
fn assert_error_body(body: &Value, code: &str, field: Option<&str>, context: &str) {
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("{context}: error body is not a JSON object: {body}"));
    for key in object.keys() {
        assert!(
            ["error", "message", "field"].contains(&key.as_str()),
            "{context}: unexpected member {key:?} in {body}"
        );
    }
    assert_eq!(body["error"], code, "{context}: {body}");
    assert_eq!(body["field"].as_str(), field, "{context}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.len() > 10, "{context}: message too short: {body}");
}

fn is_uuid_v4(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    lengths == [8, 4, 4, 4, 12]
        && text
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

#[tokio::test(flavor = "multi_thread")]
async fn issued_token_has_tfe_claims_and_verifies_against_the_current_key() {
    let server = TestServer::start(Options::default()).await;
    let current = kid_in_state(&key_list(&server).await, "current");
    let before = SystemClock.now();
    let response = server
        .client()
        .post(server.api_url("/v1/tokens"))
        .bearer_auth(&server.tokens.all)
        .json(&run_body("acme", "prod", "apply"))
        .send()
        .await
        .unwrap();
    let after = SystemClock.now();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[CONTENT_TYPE].to_str().unwrap(),
        "application/json"
    );
    let body: Value = response.json().await.unwrap();
    let members: BTreeSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        members,
        BTreeSet::from(["token", "kid", "jti", "issued_at", "expires_at"]),
        "{body}"
    );
    let token = body["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);

    let header = part(token, 0);
    assert_eq!(
        header,
        json!({"alg": "RS256", "typ": "JWT", "kid": current}),
        "the header names the current key and nothing else"
    );
    assert_eq!(body["kid"], current);

    let claims = part(token, 1);
    let iat = claims["iat"].as_u64().unwrap();
    assert!(
        before <= iat && iat <= after,
        "iat {iat} not in [{before}, {after}]"
    );
    let expected = json!({
        "jti": body["jti"],
        "iss": server.issuer(),
        "aud": "vault.workload.identity",
        "iat": iat,
        "nbf": iat - 5,
        "exp": iat + DEFAULT_TTL,
        "sub": "organization:acme:project:Default Project:workspace:prod:run_phase:apply",
        "terraform_organization_id": "org-GRNbCjYNpBB6NEH9",
        "terraform_organization_name": "acme",
        "terraform_project_id": "prj-vegSA59s1XPwMr2t",
        "terraform_project_name": "Default Project",
        "terraform_workspace_id": "ws-mbsd5E3Ktt5Rg2Xm",
        "terraform_workspace_name": "prod",
        "terraform_full_workspace": "organization:acme:project:Default Project:workspace:prod",
        "terraform_run_id": "run-X3n1AUXNGWbfECsJ",
        "terraform_run_phase": "apply",
    });
    assert_eq!(
        claims, expected,
        "every claim of docs/reference.md §6, and no other"
    );
    let jti = claims["jti"].as_str().unwrap();
    assert!(is_uuid_v4(jti), "jti {jti:?} is not a UUID v4");
    assert_eq!(body["issued_at"], iat);
    assert_eq!(body["expires_at"], iat + DEFAULT_TTL);

    // The signature verifies with the published JWK of that kid.
    let jwks = server.jwks().await;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == current)
        .expect("the signing key is published");
    let key = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().unwrap(),
        jwk["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["vault.workload.identity"]);
    validation.set_issuer(&[server.issuer()]);
    let verified = jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
    assert_eq!(verified.claims, expected);

    // Two tokens never share a jti.
    let second = server.mint("prod", "plan").await;
    assert_ne!(second["jti"], body["jti"]);
    assert_eq!(
        part(second["token"].as_str().unwrap(), 1)["sub"],
        "organization:acme:project:Default Project:workspace:prod:run_phase:plan"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_audience_and_ttl_are_honoured_up_to_max_ttl() {
    let server = TestServer::start(Options::default()).await;
    let cases = [
        ("aws.workload.identity", "20m", 1200),
        (
            "//iam.googleapis.com/projects/42/locations/global/x",
            "90s",
            90,
        ),
        ("api://AzureADTokenExchange", "24h", MAX_TTL),
    ];
    for (audience, ttl, seconds) in cases {
        let mut body = run_body("acme", "prod", "plan");
        body["audience"] = audience.into();
        body["ttl"] = ttl.into();
        let (status, answer) = server.post_token(&body).await;
        assert_eq!(status, 200, "{audience} {ttl}: {answer}");
        let claims = part(answer["token"].as_str().unwrap(), 1);
        assert_eq!(claims["aud"], audience);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            seconds,
            "{ttl}"
        );
        assert_eq!(
            answer["expires_at"].as_u64().unwrap() - answer["issued_at"].as_u64().unwrap(),
            seconds
        );
    }
    let mut body = run_body("acme", "prod", "plan");
    body["ttl"] = "24h 1s".into();
    let (status, answer) = server.post_token(&body).await;
    assert_eq!(status, 400, "{answer}");
    assert_error_body(&answer, "invalid_request", Some("ttl"), "ttl above max_ttl");
    assert!(
        answer["message"].as_str().unwrap().contains("max_ttl"),
        "{answer}"
    );
    server.stop().await;
}

/// One refused `POST /v1/tokens`.
struct Refusal {
    name: &'static str,
    /// `None`: no Authorization header.
    authorization: Option<String>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    field: Option<String>,
    /// Text the message must contain: how to fix the request.
    hint: &'static str,
}

fn with(mutate: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut body = run_body("acme", "prod", "apply");
    mutate(&mut body);
    serde_json::to_vec(&body).unwrap()
}

fn invalid(name: &'static str, body: Vec<u8>, field: Option<&str>, hint: &'static str) -> Refusal {
    Refusal {
        name,
        authorization: None,
        content_type: Some("application/json"),
        body,
        status: 400,
        code: "invalid_request",
        field: field.map(str::to_owned),
        hint,
    }
}

fn refusals(all: &str, without_tokens_scope: &str) -> Vec<Refusal> {
    let valid = with(|_| {});
    let bearer = |t: &str| Some(format!("Bearer {t}"));
    let mut cases = vec![
        Refusal {
            name: "no Authorization header",
            authorization: None,
            content_type: Some("application/json"),
            body: valid.clone(),
            status: 401,
            code: "unauthorized",
            field: None,
            hint: "Authorization: Bearer",
        },
        Refusal {
            name: "unknown bearer token",
            authorization: bearer("tfeoidc_not-a-real-token-at-all-0000000000"),
            content_type: Some("application/json"),
            body: valid.clone(),
            status: 401,
            code: "unauthorized",
            field: None,
            hint: "not valid",
        },
        Refusal {
            name: "Basic instead of Bearer",
            authorization: Some(format!("Basic {all}")),
            content_type: Some("application/json"),
            body: valid.clone(),
            status: 401,
            code: "unauthorized",
            field: None,
            hint: "Bearer",
        },
        Refusal {
            name: "token without the tokens scope",
            authorization: bearer(without_tokens_scope),
            content_type: Some("application/json"),
            body: valid.clone(),
            status: 403,
            code: "forbidden",
            field: None,
            hint: "tokens file",
        },
        Refusal {
            name: "text/plain body",
            authorization: None,
            content_type: Some("text/plain"),
            body: valid.clone(),
            status: 415,
            code: "unsupported_media_type",
            field: None,
            hint: "Content-Type: application/json",
        },
        Refusal {
            name: "no Content-Type",
            authorization: None,
            content_type: None,
            body: valid.clone(),
            status: 415,
            code: "unsupported_media_type",
            field: None,
            hint: "application/json",
        },
        Refusal {
            name: "body above api.max_body",
            authorization: None,
            content_type: Some("application/json"),
            body: {
                // Valid JSON padded with whitespace: only its size is wrong.
                let mut body = b"{".to_vec();
                body.extend(std::iter::repeat_n(b' ', 4096));
                body.extend_from_slice(&valid[1..]);
                body
            },
            status: 413,
            code: "payload_too_large",
            field: None,
            hint: "api.max_body",
        },
        invalid(
            "malformed JSON",
            b"{\"organization\": ".to_vec(),
            None,
            "not a valid request",
        ),
        invalid(
            "not JSON at all",
            b"organization=acme".to_vec(),
            None,
            "not a valid request",
        ),
        invalid(
            "empty object",
            b"{}".to_vec(),
            Some("organization"),
            "missing field",
        ),
        invalid(
            "missing run.phase",
            with(|b| {
                b["run"].as_object_mut().unwrap().remove("phase");
            }),
            Some("run.phase"),
            "missing field",
        ),
        invalid(
            "missing workspace",
            with(|b| {
                b.as_object_mut().unwrap().remove("workspace");
            }),
            Some("workspace"),
            "missing field",
        ),
        invalid(
            "organization.id is a number",
            with(|b| b["organization"]["id"] = 42.into()),
            Some("organization.id"),
            "invalid type",
        ),
        invalid(
            "run is a string",
            with(|b| b["run"] = "run-X3n1AUXNGWbfECsJ".into()),
            Some("run"),
            "invalid type",
        ),
        invalid(
            "audience is a number",
            with(|b| b["audience"] = 7.into()),
            Some("audience"),
            "invalid type",
        ),
        invalid(
            "ttl is a number",
            with(|b| b["ttl"] = 7200.into()),
            Some("ttl"),
            "invalid type",
        ),
        invalid(
            "unknown top-level field",
            with(|b| b["extra"] = true.into()),
            Some("extra"),
            "unknown field",
        ),
        invalid(
            "unknown nested field",
            with(|b| b["run"]["ref"] = "main".into()),
            Some("run.ref"),
            "unknown field",
        ),
    ];
    let name_cases: Vec<(
        &'static str,
        &'static str,
        &'static str,
        Value,
        &'static str,
    )> = vec![
        (
            "org name with ':'",
            "organization",
            "name",
            "ac:me".into(),
            "':'",
        ),
        (
            "org name with '*'",
            "organization",
            "name",
            "acme*".into(),
            "'*'",
        ),
        (
            "org name with a control char",
            "organization",
            "name",
            "ac\u{7}me".into(),
            "control",
        ),
        (
            "org name empty",
            "organization",
            "name",
            "".into(),
            "1 to 90",
        ),
        (
            "org name 91 chars",
            "organization",
            "name",
            "a".repeat(91).into(),
            "1 to 90",
        ),
        (
            "org name non-ASCII",
            "organization",
            "name",
            "acmé".into(),
            "letters, digits",
        ),
        (
            "workspace name with ':'",
            "workspace",
            "name",
            "prod:run_phase:apply".into(),
            "':'",
        ),
        (
            "workspace name with '*'",
            "workspace",
            "name",
            "prod*".into(),
            "'*'",
        ),
        (
            "workspace name with a space",
            "workspace",
            "name",
            "my prod".into(),
            "letters, digits",
        ),
        (
            "workspace name with a newline",
            "workspace",
            "name",
            "prod\n".into(),
            "control",
        ),
        (
            "workspace name 91 chars",
            "workspace",
            "name",
            "w".repeat(91).into(),
            "1 to 90",
        ),
        (
            "project name forging a workspace",
            "project",
            "name",
            "x:workspace:prod".into(),
            "':'",
        ),
        (
            "project name with '*'",
            "project",
            "name",
            "Default*".into(),
            "'*'",
        ),
        (
            "project name with a tab",
            "project",
            "name",
            "Default\tProject".into(),
            "control",
        ),
        (
            "project name leading space",
            "project",
            "name",
            " Default".into(),
            "spaces",
        ),
        (
            "project name trailing space",
            "project",
            "name",
            "Default ".into(),
            "spaces",
        ),
        (
            "project name double space",
            "project",
            "name",
            "Default  Project".into(),
            "spaces",
        ),
        (
            "project name 91 chars",
            "project",
            "name",
            "p".repeat(91).into(),
            "1 to 90",
        ),
        (
            "org id without prefix",
            "organization",
            "id",
            "GRNbCjYNpBB6NEH9".into(),
            "org-",
        ),
        (
            "org id with another prefix",
            "organization",
            "id",
            "ws-GRNbCjYNpBB6NEH9".into(),
            "org-",
        ),
        (
            "org id with nothing after the prefix",
            "organization",
            "id",
            "org-".into(),
            "org-",
        ),
        (
            "org id with a bad char",
            "organization",
            "id",
            "org-GRNb:CjYN".into(),
            "org-",
        ),
        (
            "project id without prefix",
            "project",
            "id",
            "vegSA59s1XPwMr2t".into(),
            "prj-",
        ),
        (
            "project id with '_'",
            "project",
            "id",
            "prj-veg_SA59".into(),
            "prj-",
        ),
        (
            "workspace id of 65 chars",
            "workspace",
            "id",
            format!("ws-{}", "a".repeat(65)).into(),
            "ws-",
        ),
        (
            "workspace id with '*'",
            "workspace",
            "id",
            "ws-mbsd*".into(),
            "ws-",
        ),
        (
            "run id without prefix",
            "run",
            "id",
            "X3n1AUXNGWbfECsJ".into(),
            "run-",
        ),
        (
            "run id with a space",
            "run",
            "id",
            "run-X3n1 AUX".into(),
            "run-",
        ),
        (
            "phase destroy",
            "run",
            "phase",
            "destroy".into(),
            "\"plan\" or \"apply\"",
        ),
        (
            "phase upper case",
            "run",
            "phase",
            "PLAN".into(),
            "\"plan\" or \"apply\"",
        ),
        (
            "phase empty",
            "run",
            "phase",
            "".into(),
            "\"plan\" or \"apply\"",
        ),
    ];
    for (name, object, member, value, hint) in name_cases {
        let field = format!("{object}.{member}");
        cases.push(invalid(
            name,
            with(|b| b[object][member] = value),
            Some(&field),
            hint,
        ));
    }
    let top_cases: Vec<(&'static str, &'static str, &'static str, &'static str)> = vec![
        (
            "audience outside the allowlist",
            "audience",
            "sts.amazonaws.com",
            "tokens.audiences",
        ),
        (
            "audience almost matching a wildcard",
            "audience",
            "//iam.googleapis.com",
            "tokens.audiences",
        ),
        ("audience empty", "audience", "", "1 to 256"),
        (
            "audience with a space",
            "audience",
            "vault workload",
            "whitespace",
        ),
        ("ttl malformed", "ttl", "soon", "\"2h\""),
        ("ttl negative", "ttl", "-1h", "\"2h\""),
        ("ttl zero", "ttl", "0s", "at least 1s"),
        ("ttl above max_ttl", "ttl", "25h", "tokens.max_ttl"),
        ("ttl far above max_ttl", "ttl", "3650d", "tokens.max_ttl"),
    ];
    for (name, member, value, hint) in top_cases {
        cases.push(invalid(
            name,
            with(|b| b[member] = value.into()),
            Some(member),
            hint,
        ));
    }
    cases
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_of_v1_tokens_names_its_code_and_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = TestServer::start(Options {
        api_toml: "max_body = \"2KiB\"".into(),
        extra_toml: format!("[audit]\npath = {audit:?}\n"),
        dir: Some(dir),
        ..Default::default()
    })
    .await;
    let keys_before = key_list(&server).await;
    let cases = refusals(&server.tokens.all, &server.tokens.keys_only);
    let mut by_code = std::collections::BTreeMap::<&str, f64>::new();
    for case in &cases {
        let mut request = server
            .client()
            .post(server.api_url("/v1/tokens"))
            .body(case.body.clone());
        // Requests default to the all-scopes caller unless the case is about authentication.
        let authorization = match (&case.authorization, case.status) {
            (Some(a), _) => Some(a.clone()),
            (None, 401) => None,
            (None, _) => Some(format!("Bearer {}", server.tokens.all)),
        };
        if let Some(a) = authorization {
            request = request.header(AUTHORIZATION, a);
        }
        if let Some(ct) = case.content_type {
            request = request.header(CONTENT_TYPE, ct);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(status, case.status, "{}", case.name);
        assert_eq!(
            response.headers()[CONTENT_TYPE].to_str().unwrap(),
            "application/json",
            "{}",
            case.name
        );
        if status == 401 {
            assert_eq!(
                response.headers()[WWW_AUTHENTICATE].to_str().unwrap(),
                "Bearer",
                "{}",
                case.name
            );
        } else {
            assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
        }
        let body: Value = response.json().await.unwrap();
        assert_error_body(&body, case.code, case.field.as_deref(), case.name);
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(case.hint),
            "{}: message {message:?} should contain {:?}",
            case.name,
            case.hint
        );
        *by_code.entry(case.code).or_default() += 1.0;
    }

    // A body too large without a Content-Length (chunked) is cut off at max_body as well.
    let chunked = {
        let addr = server.running.api_addr;
        let token = server.tokens.all.clone();
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            write!(
                stream,
                "POST /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let chunk = " ".repeat(1000);
            for _ in 0..4 {
                if write!(stream, "{:x}\r\n{chunk}\r\n", chunk.len()).is_err() {
                    break;
                }
            }
            let _ = write!(stream, "0\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answer
        })
        .await
        .unwrap()
    };
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert!(
        chunked.contains("\"error\":\"payload_too_large\""),
        "{chunked}"
    );
    *by_code.entry("payload_too_large").or_default() += 1.0;

    // Nothing was issued, every refusal was counted by its code, the keys did not move and the
    // audit file is empty.
    let text = metrics(&server).await;
    assert_eq!(
        sample(&text, "tfe_oidc_tokens_issued_total{phase=\"plan\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "tfe_oidc_tokens_issued_total{phase=\"apply\"}"),
        Some(0.0)
    );
    for (code, count) in &by_code {
        assert_eq!(
            sample(
                &text,
                &format!("tfe_oidc_token_errors_total{{reason=\"{code}\"}}")
            ),
            Some(*count),
            "token errors of reason {code}\n{text}"
        );
    }
    assert_eq!(
        family_total(&text, "tfe_oidc_token_errors_total"),
        (cases.len() + 1) as f64
    );
    assert_eq!(key_list(&server).await, keys_before);
    assert_eq!(std::fs::read_to_string(&audit).unwrap(), "");

    // And the very same server still issues a valid request.
    server.mint("prod", "plan").await;
    let text = metrics(&server).await;
    assert_eq!(
        sample(&text, "tfe_oidc_tokens_issued_total{phase=\"plan\"}"),
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn names_at_the_length_limit_and_inner_single_spaces_are_accepted() {
    let server = TestServer::start(Options::default()).await;
    let org = "o".repeat(90);
    let mut body = run_body(&org, &"W-_9".repeat(22), "plan");
    body["project"]["name"] = "A b-c d_e 9".into();
    body["workspace"]["id"] = format!("ws-{}", "Z".repeat(64)).into();
    let (status, answer) = server.post_token(&body).await;
    assert_eq!(status, 200, "{answer}");
    let claims = part(answer["token"].as_str().unwrap(), 1);
    assert_eq!(claims["terraform_organization_name"], org.as_str());
    assert_eq!(claims["terraform_project_name"], "A b-c d_e 9");
    assert_eq!(
        claims["terraform_workspace_id"],
        format!("ws-{}", "Z".repeat(64))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn key_routes_need_the_keys_scope() {
    let server = TestServer::start(Options::default()).await;
    let list = key_list(&server).await;
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{list}");
    assert_eq!(keys[0]["state"], "next");
    assert_eq!(keys[1]["state"], "current");
    for key in keys {
        assert_eq!(key["bits"], 2048);
        assert_eq!(key["kid"].as_str().unwrap().len(), 43);
        assert!(
            key.get("n").is_none() && key.get("d").is_none(),
            "no key material: {key}"
        );
    }
    let kid = kid_in_state(&list, "next");
    let routes = [
        ("GET", "/v1/keys".to_owned()),
        ("POST", "/v1/keys/rotate?force=true".to_owned()),
        ("POST", format!("/v1/keys/{kid}/revoke")),
    ];
    for (method, path) in &routes {
        let request = |token: Option<&str>| {
            let builder = server
                .client()
                .request(method.parse().unwrap(), server.api_url(path));
            match token {
                Some(t) => builder.bearer_auth(t),
                None => builder,
            }
        };
        let response = request(Some(&server.tokens.tokens_only))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_error_body(&body, "forbidden", None, path);
        assert!(
            body["message"].as_str().unwrap().contains("\"keys\""),
            "{body}"
        );

        let response = request(None).send().await.unwrap();
        assert_eq!(response.status(), 401, "{method} {path}");
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_error_body(&body, "unauthorized", None, path);
    }
    // The refused admin calls changed nothing.
    assert_eq!(key_list(&server).await, list);
    let text = metrics(&server).await;
    assert_eq!(sample(&text, "tfe_oidc_key_rotations_total"), Some(0.0));
    // The all-scopes caller may list keys as well.
    let response = server
        .client()
        .get(server.api_url("/v1/keys"))
        .bearer_auth(&server.tokens.all)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_rotation_waits_for_jwks_max_age_unless_forced_and_retires_the_current_key() {
    let start = 1_800_000_000;
    let clock = FakeClock::new(start);
    let server = TestServer::start(Options {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let before = key_list(&server).await;
    let (old_current, old_next) = (
        kid_in_state(&before, "current"),
        kid_in_state(&before, "next"),
    );

    // The next key was published just now: verifiers may not have it yet.
    clock.advance(JWKS_MAX_AGE - 1);
    let (status, content_type, body) = admin_post(&server, "/v1/keys/rotate").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(content_type, "application/json");
    assert_error_body(&body, "conflict", None, "young next key");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("jwks_max_age") && message.contains("force"),
        "{message}"
    );
    assert_eq!(
        key_list(&server).await,
        before,
        "a refused rotation changes nothing"
    );

    let (status, _, body) = admin_post(&server, "/v1/keys/rotate?force=maybe").await;
    assert_eq!(status, 400, "{body}");
    assert_error_body(&body, "invalid_request", Some("force"), "bad force");

    // Forced: the next key signs, the current one retires for max_ttl + 5m.
    let now = clock.now();
    let (status, content_type, body) = admin_post(&server, "/v1/keys/rotate?force=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "application/json");
    assert_eq!(
        body,
        key_list(&server).await,
        "the answer is the new key set"
    );
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3, "{body}");
    let new_next = kid_in_state(&body, "next");
    assert_eq!(kid_in_state(&body, "current"), old_next);
    assert_eq!(kid_in_state(&body, "retired"), old_current);
    assert!(new_next != old_current && new_next != old_next);
    let retired = keys.iter().find(|k| k["state"] == "retired").unwrap();
    assert_eq!(retired["retired_at"], now);
    assert_eq!(retired["verify_until"], now + MAX_TTL + RETIRE_MARGIN);
    let current = keys.iter().find(|k| k["state"] == "current").unwrap();
    assert_eq!(current["activated_at"], now);
    let next = keys.iter().find(|k| k["state"] == "next").unwrap();
    assert_eq!(next["created_at"], now);

    // Published: all three kids; signing: the old next key. The retired private key is gone.
    assert_eq!(
        jwks_kids(&server.jwks().await),
        BTreeSet::from([old_current.clone(), old_next.clone(), new_next.clone()])
    );
    assert_eq!(server.mint("prod", "apply").await["kid"], old_next);
    let keys_dir = server.config.keys.dir.clone();
    assert!(!keys_dir.join(format!("{old_current}.pem")).exists());
    assert!(keys_dir.join(format!("{old_next}.pem")).exists());
    let text = metrics(&server).await;
    assert_eq!(sample(&text, "tfe_oidc_key_rotations_total"), Some(1.0));
    assert_eq!(sample(&text, "tfe_oidc_jwks_keys"), Some(3.0));

    // Once the new next key has been published for jwks_max_age, no force is needed.
    clock.advance(JWKS_MAX_AGE);
    let (status, _, body) = admin_post(&server, "/v1/keys/rotate").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kid_in_state(&body, "current"), new_next);
    assert_eq!(body["keys"].as_array().unwrap().len(), 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_key_unpublishes_it_at_once_and_explains_vault_caching() {
    let server = TestServer::start(Options::default()).await;
    let before = key_list(&server).await;
    let (current, next) = (
        kid_in_state(&before, "current"),
        kid_in_state(&before, "next"),
    );

    // Revoking the next key: a new next key replaces it, the current key keeps signing.
    let (status, content_type, body) =
        admin_post(&server, &format!("/v1/keys/{next}/revoke")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "application/json");
    assert_eq!(body["revoked"], next);
    let note = body["note"].as_str().expect("a note on Vault's caching");
    assert!(note.contains("Vault") && note.contains("JWKS"), "{note}");
    assert_eq!(kid_in_state(&body, "current"), current);
    let replacement = kid_in_state(&body, "next");
    assert_ne!(replacement, next);
    let kids = jwks_kids(&server.jwks().await);
    assert_eq!(kids, BTreeSet::from([current.clone(), replacement.clone()]));

    // Revoking the current key: the next key takes over at once.
    let (status, _, body) = admin_post(&server, &format!("/v1/keys/{current}/revoke")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], current);
    assert!(body["note"].as_str().unwrap().contains("Vault"));
    assert_eq!(kid_in_state(&body, "current"), replacement);
    let newest = kid_in_state(&body, "next");
    let kids = jwks_kids(&server.jwks().await);
    assert!(
        !kids.contains(&current),
        "revoked key still published: {kids:?}"
    );
    assert_eq!(kids, BTreeSet::from([replacement.clone(), newest]));
    assert_eq!(server.mint("prod", "plan").await["kid"], replacement);
    let keys_dir = server.config.keys.dir.clone();
    assert!(!keys_dir.join(format!("{current}.pem")).exists());
    assert!(!keys_dir.join(format!("{next}.pem")).exists());

    // A revoked, unknown or malformed kid is a 404, and changes nothing.
    let after = key_list(&server).await;
    let unknown = "A".repeat(43);
    for kid in [
        current.as_str(),
        unknown.as_str(),
        "not-a-kid",
        "..%2F..%2Fetc%2Fpasswd",
    ] {
        let (status, content_type, body) =
            admin_post(&server, &format!("/v1/keys/{kid}/revoke")).await;
        assert_eq!(status, 404, "{kid}: {body}");
        assert_eq!(content_type, "application/json", "{kid}");
        assert_error_body(&body, "not_found", None, kid);
        assert!(
            body["message"].as_str().unwrap().contains("GET /v1/keys"),
            "{body}"
        );
    }
    assert_eq!(key_list(&server).await, after);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_expose_every_spec_family_and_probes_answer() {
    let server = TestServer::start(Options::default()).await;
    server.mint("prod", "plan").await;
    server.mint("prod", "apply").await;
    server.mint("prod", "apply").await;
    let (status, _) = server.post_token(&json!({})).await;
    assert_eq!(status, 400);
    let jwks = server.jwks().await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);

    let response = reqwest::get(server.api_url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200, "metrics need no authentication");
    assert!(
        response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for (name, kind) in [
        ("tfe_oidc_tokens_issued_total", "counter"),
        ("tfe_oidc_token_errors_total", "counter"),
        ("tfe_oidc_key_rotations_total", "counter"),
        ("tfe_oidc_current_key_age_seconds", "gauge"),
        ("tfe_oidc_jwks_keys", "gauge"),
        ("tfe_oidc_http_requests_total", "counter"),
        ("tfe_oidc_http_request_duration_seconds", "histogram"),
        ("tfe_oidc_discovery_refused_total", "counter"),
        ("tfe_oidc_vault_requests_total", "counter"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} ({kind}) missing:\n{text}"
        );
    }
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    };
    expect("tfe_oidc_tokens_issued_total{phase=\"plan\"}", 1.0);
    expect("tfe_oidc_tokens_issued_total{phase=\"apply\"}", 2.0);
    expect(
        "tfe_oidc_token_errors_total{reason=\"invalid_request\"}",
        1.0,
    );
    expect("tfe_oidc_key_rotations_total", 0.0);
    expect("tfe_oidc_jwks_keys", 2.0);
    expect("tfe_oidc_discovery_refused_total", 0.0);
    expect(
        "tfe_oidc_http_requests_total{listener=\"api\",route=\"/v1/tokens\",status=\"200\"}",
        3.0,
    );
    expect(
        "tfe_oidc_http_requests_total{listener=\"api\",route=\"/v1/tokens\",status=\"400\"}",
        1.0,
    );
    expect(
        "tfe_oidc_http_requests_total{listener=\"discovery\",route=\"/.well-known/jwks\",status=\"200\"}",
        1.0,
    );
    expect(
        "tfe_oidc_http_request_duration_seconds_count{listener=\"api\",route=\"/v1/tokens\"}",
        4.0,
    );
    expect(
        "tfe_oidc_http_request_duration_seconds_bucket{listener=\"api\",route=\"/v1/tokens\",le=\"+Inf\"}",
        4.0,
    );
    let age = sample(&text, "tfe_oidc_current_key_age_seconds").expect("key age gauge");
    assert!((0.0..60.0).contains(&age), "a fresh key is young: {age}");

    for path in ["/healthz", "/readyz"] {
        let response = reqwest::get(server.api_url(path)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    assert_eq!(
        reqwest::get(server.api_url("/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );

    // Unknown routes under /v1 answer a JSON 404, even with valid credentials.
    for path in ["/v1/nope", "/v1/tokens/extra", "/v2/tokens"] {
        let response = server
            .client()
            .get(server.api_url(path))
            .bearer_auth(&server.tokens.all)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body: Value = response.json().await.unwrap();
        assert_error_body(&body, "not_found", None, path);
    }
    let text = metrics(&server).await;
    assert!(
        sample(
            &text,
            "tfe_oidc_http_requests_total{listener=\"api\",route=\"unmatched\",status=\"404\"}"
        ) == Some(3.0),
        "unknown routes share one bounded label:\n{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_file_gets_one_line_per_issued_token_naming_the_caller_but_never_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = TestServer::start(Options {
        extra_toml: format!("[audit]\npath = {audit:?}\n"),
        dir: Some(dir),
        ..Default::default()
    })
    .await;
    let first = server.mint("prod", "plan").await;
    let mut body = run_body("acme", "staging", "apply");
    body["audience"] = "aws.workload.identity".into();
    let (status, second) = server.post_token(&body).await;
    assert_eq!(status, 200);
    let response = server
        .client()
        .post(server.api_url("/v1/tokens"))
        .bearer_auth(&server.tokens.tokens_only)
        .json(&run_body("acme", "dev", "plan"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let third: Value = response.json().await.unwrap();
    // A refusal is not an issued token.
    let (status, _) = server
        .post_token(&run_body("acme", "prod", "destroy"))
        .await;
    assert_eq!(status, 400);

    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for ((line, issued), caller) in lines
        .iter()
        .zip([&first, &second, &third])
        .zip(["tfe", "tfe", "runner"])
    {
        let token = issued["token"].as_str().unwrap();
        let signature = token.rsplit('.').next().unwrap();
        assert!(!line.contains(token) && !line.contains(signature), "{line}");
        let entry: Value = serde_json::from_str(line).unwrap();
        let claims = part(token, 1);
        assert_eq!(entry["jti"], claims["jti"]);
        assert_eq!(entry["sub"], claims["sub"]);
        assert_eq!(entry["aud"], claims["aud"]);
        assert_eq!(entry["iat"], claims["iat"]);
        assert_eq!(entry["exp"], claims["exp"]);
        assert_eq!(entry["kid"], issued["kid"]);
        assert_eq!(entry["caller"], caller);
        for member in entry.as_object().unwrap().keys() {
            assert!(
                ["event", "jti", "sub", "aud", "kid", "iat", "exp", "caller"]
                    .contains(&member.as_str()),
                "unexpected audit member {member}: {line}"
            );
        }
    }
    let second_entry: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(second_entry["aud"], "aws.workload.identity");
    assert_eq!(
        second_entry["sub"],
        "organization:acme:project:Default Project:workspace:staging:run_phase:apply"
    );
    server.stop().await;
}
