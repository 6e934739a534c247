//! The `tfe-oidc` binary as operators run it (docs/reference.md §1, §2, §7, §8): each test runs the built
//! executable as a subprocess with a clean environment, its own temporary directory and its own
//! loopback ports, and talks to it over plain HTTP/1.1.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Output;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::process::{Server, Setup, ports, run, text, tfe_oidc};
use common::raw::{http, post_token, read_response, token_kid};
use common::{ApiTokens, run_body};
use serde_json::Value;

fn jwks_kids(discovery: SocketAddr) -> Vec<String> {
    let (status, _, body) = http(discovery, "GET", "/.well-known/jwks", &[], b"");
    assert_eq!(status, 200);
    let jwks: Value = serde_json::from_str(&body).unwrap();
    common::jwks_kids(&jwks).into_iter().collect()
}

fn keys_json(setup: &Setup) -> Value {
    let out = run(&mut setup.command(&["keys", "list", "--format", "json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kid_in_state(list: &Value, state: &str) -> String {
    let keys: Vec<&Value> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["state"] == state)
        .collect();
    assert_eq!(keys.len(), 1, "one {state} key in {list}");
    keys[0]["kid"].as_str().unwrap().to_owned()
}

#[test]
fn check_config_without_a_file_prints_the_embedded_loopback_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(tfe_oidc(dir.path()).arg("check-config"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in [
        "issuer = \"http://127.0.0.1:8443\"",
        "discovery.listen = \"127.0.0.1:8443\"",
        "api.listen = \"127.0.0.1:8080\"",
        "discovery.jwks_max_age = \"5m\"",
        "api.max_body = 65536",
        "tokens.default_audience = \"vault.workload.identity\"",
        "tokens.default_ttl = \"2h\"",
        "tokens.max_ttl = \"24h\"",
        "keys.dir = \"keys\"",
        "keys.rsa_bits = 2048",
        "audit.path = (none)",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in:\n{stdout}"
        );
    }
    // Checking touches nothing: no key store, no development token.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn check_config_lists_every_problem_of_a_bad_file_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "issuer = \"https://tfe.example.com/\"\n\
         colour = \"blue\"\n\
         [discovery]\nlisten = \"127.0.0.1:18443\"\njwks_max_age = \"7h\"\n\
         [api]\nlisten = \"0.0.0.0:18080\"\n\
         [tokens]\ndefault_ttl = \"48h\"\n\
         [keys]\nrotation_period = \"24h\"\n",
    )
    .unwrap();
    let out = run(tfe_oidc(dir.path())
        .args(["check-config", "--config"])
        .arg(&config));
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty(), "no settings printed for a bad file");
    let stderr = text(&out.stderr);
    for key in [
        "issuer",
        "colour",
        "discovery.jwks_max_age",
        "tokens.default_ttl",
        "api.listen",
    ] {
        assert!(
            stderr.contains(&format!("- {key}: ")),
            "{key} not named in:\n{stderr}"
        );
    }
    assert!(stderr.contains("trailing slash"), "{stderr}");
    assert!(stderr.contains("insecure_http"), "{stderr}");
}

#[test]
fn environment_overrides_are_applied_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(tfe_oidc(dir.path())
        .arg("check-config")
        .env("TFE_OIDC_KEYS_RSA_BITS", "1000"));
    assert_eq!(out.status.code(), Some(64));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("keys.rsa_bits"), "{stderr}");

    let out = run(tfe_oidc(dir.path())
        .arg("check-config")
        .env("TFE_OIDC_KEYS_RSA_BITS", "3072")
        .env(
            "TFE_OIDC_TOKENS_AUDIENCES",
            "vault.workload.identity, sts.example",
        )
        .env("TFE_OIDC_API_LISTEN", "127.0.0.1:18081"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("keys.rsa_bits = 3072\n"), "{stdout}");
    assert!(
        stdout.contains("api.listen = \"127.0.0.1:18081\"\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tokens.audiences = [\"vault.workload.identity\", \"sts.example\"]\n"),
        "{stdout}"
    );

    // A misspelt override is an error, not silently ignored.
    let out = run(tfe_oidc(dir.path())
        .arg("check-config")
        .env("TFE_OIDC_KEY_DIR", "/tmp/x"));
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("TFE_OIDC_KEY_DIR"));
}

#[test]
fn tfe_oidc_config_variable_selects_the_file() {
    let setup = Setup::new("");
    let out = run(tfe_oidc(setup.dir.path())
        .arg("check-config")
        .env("TFE_OIDC_CONFIG", &setup.config));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("issuer = \"http://{}\"\n", setup.discovery)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("api.listen = \"{}\"\n", setup.api)),
        "{stdout}"
    );

    let bad = setup.dir.path().join("bad.toml");
    std::fs::write(&bad, "[keys]\nrsa_bits = 1024\n").unwrap();
    let out = run(tfe_oidc(setup.dir.path())
        .arg("check-config")
        .env("TFE_OIDC_CONFIG", &bad));
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("keys.rsa_bits"));

    let missing = setup.dir.path().join("missing.toml");
    let out = run(tfe_oidc(setup.dir.path())
        .arg("check-config")
        .env("TFE_OIDC_CONFIG", &missing));
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("missing.toml"));
}

#[test]
fn a_running_server_locks_the_key_store_but_readers_work_and_offline_rotation_follows_the_rules() {
    let setup = Setup::new("");
    let server = setup.serve(&[], &[]).ready();

    // A second server on the same key store, on other ports, refuses to start.
    let (other_discovery, other_api) = ports();
    let second_config = setup.dir.path().join("second.toml");
    std::fs::write(
        &second_config,
        format!(
            "[discovery]\nlisten = \"{other_discovery}\"\n[api]\nlisten = \"{other_api}\"\n\
             tokens_file = {:?}\n[keys]\ndir = {:?}\n",
            setup.dir.path().join("api-tokens"),
            setup.keys
        ),
    )
    .unwrap();
    let mut second = Server::spawn(
        {
            let mut c = tfe_oidc(setup.dir.path());
            c.args(["serve", "--config"]).arg(&second_config);
            c
        },
        setup.dir.path(),
        other_api,
    );
    let status = second
        .wait_exit(Duration::from_secs(20))
        .expect("the second server must exit");
    assert_eq!(status.code(), Some(1));
    let stderr = second.stderr();
    assert!(stderr.contains("locked"), "{stderr}");
    assert!(TcpStream::connect(other_api).is_err(), "nothing bound");

    // Offline rotation is refused while the server holds the store.
    let out = run(&mut setup.command(&["keys", "rotate", "--force"]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("locked"), "{stderr}");
    assert!(stderr.contains("/v1/keys/rotate"), "{stderr}");

    // Readers work while it runs.
    let list = keys_json(&setup);
    assert_eq!(list["keys"].as_array().unwrap().len(), 2, "{list}");
    let (current, next) = (kid_in_state(&list, "current"), kid_in_state(&list, "next"));
    let out = run(&mut setup.command(&["keys", "list"]));
    assert!(out.status.success());
    let table = text(&out.stdout);
    assert!(table.starts_with("KID"), "{table}");
    let row = |kid: &str| {
        table
            .lines()
            .find(|l| l.starts_with(kid))
            .unwrap_or_else(|| panic!("{kid} not listed:\n{table}"))
            .to_owned()
    };
    assert!(row(&current).split_whitespace().nth(1) == Some("current"));
    assert!(row(&next).split_whitespace().nth(1) == Some("next"));

    let out = run(&mut setup.issue_args("apply"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let kid = token_kid(&token);
    assert_eq!(kid, current);
    assert!(jwks_kids(setup.discovery).contains(&kid));
    let claims: Value =
        serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims["iss"], format!("http://{}", setup.discovery));
    assert_eq!(
        claims["sub"],
        "organization:acme:project:Default Project:workspace:prod:run_phase:apply"
    );

    let out = run(&mut setup.issue_args("destroy"));
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("plan"), "{}", text(&out.stderr));

    // Once the server is gone the store is free, and the rotation rules apply offline too.
    server.stop();
    let out = run(&mut setup.command(&["keys", "rotate"]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("jwks_max_age") && stderr.contains("force"),
        "{stderr}"
    );
    assert_eq!(
        keys_json(&setup),
        list,
        "a refused rotation changes nothing"
    );

    let out = run(&mut setup.command(&["keys", "rotate", "--force"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let after = keys_json(&setup);
    let states: Vec<&str> = after["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["next", "current", "retired"], "{after}");
    assert_eq!(kid_in_state(&after, "current"), next);
    assert_eq!(kid_in_state(&after, "retired"), current);
    let retired = &after["keys"][2];
    assert_eq!(
        retired["verify_until"].as_u64().unwrap() - retired["retired_at"].as_u64().unwrap(),
        24 * 3600 + 300
    );
    assert!(!setup.keys.join(format!("{current}.pem")).exists());
}

/// `token issue` reaches every kind: `--module` mints a module-test token, `--stack` a Stacks
/// deployment token, with the same rules and field names as the API; flags of two kinds together
/// are a usage error (64) from the command line parser, before anything is minted.
#[test]
fn token_issue_mints_module_test_and_stacks_tokens_and_refuses_mixed_kinds() {
    let setup = Setup::new("");
    let out = run(&mut setup.command(&["keys", "rotate", "--force"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let org = ["--org", "acme", "--org-id", "org-GRNbCjYNpBB6NEH9"];
    let module = ["--module", "vpc", "--run-id", "trun-KFg8DSiRz4E37mdJ"];
    let stack = [
        "--project",
        "Default Project",
        "--project-id",
        "prj-vegSA59s1XPwMr2t",
        "--stack",
        "network",
        "--stack-id",
        "st-Ab12Cd34Ef56Gh78",
        "--deployment",
        "production",
        "--operation",
        "apply",
        "--plan-id",
        "sp-Zx98Yw76Vu54Ts32",
    ];
    let issue = |flags: &[&[&str]]| {
        let mut args = vec!["token", "issue"];
        args.extend(org);
        flags.iter().for_each(|f| args.extend_from_slice(f));
        run(&mut setup.command(&args))
    };
    let claims_of = |out: &Output| -> Value {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let token = text(&out.stdout).trim().to_owned();
        serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
    };

    let c = claims_of(&issue(&[&module]));
    assert_eq!(c["sub"], "organization:acme:module:vpc:operation:test_run");
    assert_eq!(c["terraform_run_phase"], "plan");
    assert_eq!(c["nbf"].as_u64().unwrap() + 30, c["iat"].as_u64().unwrap());
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 600);
    assert!(c.get("terraform_workspace_id").is_none(), "{c}");
    let c = claims_of(&issue(&[&module, &["--ttl", "30m"]]));
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        1800
    );

    let c = claims_of(&issue(&[&stack]));
    assert_eq!(
        c["sub"],
        "organization:acme:project:Default Project:stack:network:deployment:production:operation:apply"
    );
    assert_eq!(c["terraform_plan_id"], "sp-Zx98Yw76Vu54Ts32");

    // The library's rules, with the API's field names.
    let bad_stack: Vec<&str> = stack
        .iter()
        .map(|a| if *a == "production" { "prod*" } else { a })
        .collect();
    let refusals: [(&[&[&str]], &str); 5] = [
        (&[&module, &["--ttl", "31m"]], "ttl"),
        (&[&module, &["--phase", "apply"]], "run.phase"),
        (
            &[&["--module", "vpc:x", "--run-id", "trun-a"]],
            "module.name",
        ),
        (&[&["--module", "vpc", "--run-id", "run-a"]], "run.id"),
        (&[&bad_stack], "deployment.name"),
    ];
    for (flags, field) in refusals {
        let out = issue(flags);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{field}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty());
        assert!(text(&out.stderr).contains(field), "{}", text(&out.stderr));
    }
    // Two kinds at once: clap refuses, naming both flags.
    let run_flags: &[&str] = &common::RUN_FLAGS[4..];
    let mixed: [(&[&[&str]], &str); 4] = [
        (
            &[&module, &["--workspace", "prod", "--workspace-id", "ws-a"]],
            "--workspace",
        ),
        (&[&module, &["--stack", "network"]], "--stack"),
        (&[&stack, &["--module", "vpc"]], "--module"),
        (
            &[
                run_flags,
                &["--phase", "plan", "--deployment", "production"],
            ],
            "--deployment",
        ),
    ];
    for (flags, flag) in mixed {
        let out = issue(flags);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flag}: {stderr}");
        assert!(out.stdout.is_empty());
        assert!(
            stderr.contains(flag) && stderr.contains("cannot be used with"),
            "{stderr}"
        );
    }
}

#[test]
fn sigterm_stops_accepting_finishes_the_in_flight_request_and_exits_zero() {
    let setup = Setup::new("");
    let mut server = setup.serve(&[], &[]).ready();

    // A valid body padded with whitespace, sent in two halves around the SIGTERM.
    let mut body = run_body("acme", "prod", "plan").to_string().into_bytes();
    let pad = vec![b' '; 30_000];
    body.splice(1..1, pad);
    let mut stream = TcpStream::connect(setup.api).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /v1/tokens HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        setup.api,
        setup.tokens.tokens_only,
        body.len()
    )
    .unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(first).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    server.sigterm();
    // Shutdown has begun: new connections are refused while the request is still open.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(setup.api).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting 5s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );

    stream.write_all(rest).unwrap();
    let (status, _, answer) = read_response(&mut stream);
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["token"].as_str().unwrap().split('.').count(), 3);

    let status = server.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?}\n{}",
        server.stderr()
    );
}

#[test]
fn api_token_new_prints_a_token_whose_line_grants_only_its_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        run(tfe_oidc(dir.path()).args(["api-token", "new", "--name", "ci", "--scopes", "tokens"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "the token, then the tokens-file line:\n{stdout}"
    );
    let (token, line) = (lines[0].to_owned(), lines[1].to_owned());
    assert!(line.starts_with("sha256:"), "{line}");
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 3, "{line}");
    let digest = fields[0].strip_prefix("sha256:").unwrap();
    assert_eq!(digest.len(), 64);
    assert!(
        digest
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(&fields[1..], ["ci", "tokens"]);
    assert!(
        token.starts_with("tfeoidc_") && token.len() >= 32,
        "{token}"
    );
    assert!(!line.contains(&token), "the line holds only the digest");

    // Each call makes a new token.
    let again = run(tfe_oidc(dir.path()).args(["api-token", "new"]));
    assert!(again.status.success());
    assert!(!text(&again.stdout).contains(&token));
    let bad = run(tfe_oidc(dir.path()).args(["api-token", "new", "--scopes", "tokens,admin"]));
    assert_eq!(bad.status.code(), Some(64));

    // A server whose tokens file holds that line takes the token for /v1/tokens only.
    std::fs::write(dir.path().join("api-tokens"), format!("{line}\n")).unwrap();
    let unused = ApiTokens {
        all: String::new(),
        tokens_only: String::new(),
        keys_only: String::new(),
    };
    let setup = Setup::with_tokens(dir, unused, "", "");
    let server = setup.serve(&[], &[]).ready();
    let (status, body) = post_token(setup.api, &token, &run_body("acme", "prod", "plan"));
    assert_eq!(status, 200, "{body}");
    let auth = format!("Bearer {token}");
    let (status, _, body) = http(
        setup.api,
        "GET",
        "/v1/keys",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"forbidden\""), "{body}");
    let (status, _) = post_token(
        setup.api,
        "tfeoidc_wrong",
        &run_body("acme", "prod", "plan"),
    );
    assert_eq!(status, 401);
    server.stop();
}

#[test]
fn serve_logs_json_at_debug_without_any_secret() {
    let setup = Setup::new("");
    let server = setup
        .serve(&["--log-format", "json"], &[("TFE_OIDC_LOG", "debug")])
        .ready();

    let mut tokens = Vec::new();
    for (bearer, phase) in [
        (&setup.tokens.all, "plan"),
        (&setup.tokens.tokens_only, "apply"),
        (&setup.tokens.all, "apply"),
    ] {
        let (status, body) = post_token(setup.api, bearer, &run_body("acme", "prod", phase));
        assert_eq!(status, 200, "{body}");
        tokens.push(body);
    }
    let wrong = [
        "tfeoidc_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        format!("{}x", setup.tokens.all),
    ];
    for bearer in &wrong {
        let (status, _) = post_token(setup.api, bearer, &run_body("acme", "prod", "plan"));
        assert_eq!(status, 401);
    }
    // A forbidden call and a refused body, both with valid bearers.
    let auth = format!("Bearer {}", setup.tokens.tokens_only);
    let (status, _, _) = http(
        setup.api,
        "GET",
        "/v1/keys",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(status, 403);
    let (status, _) = post_token(
        setup.api,
        &setup.tokens.keys_only,
        &run_body("a", "b", "plan"),
    );
    assert_eq!(status, 403);
    // A request hyper cannot parse, carrying a valid bearer: logged at debug as a connection
    // error, without its bytes.
    let mut stream = TcpStream::connect(setup.api).unwrap();
    write!(
        stream,
        "POST /v1/tokens HTTP/1.1\r\nAuthorization: Bearer {}\r\nnot a header line\r\n\r\n",
        setup.tokens.all
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        text(&answer).starts_with("HTTP/1.1 400"),
        "{}",
        text(&answer)
    );

    let mut pem_lines = Vec::new();
    for entry in std::fs::read_dir(&setup.keys).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pem") {
            let pem = std::fs::read_to_string(&path).unwrap();
            assert!(pem.contains("PRIVATE KEY"));
            // Lines shorter than 16 characters (a PEM's short last line) could occur anywhere.
            pem_lines.extend(
                pem.lines()
                    .map(str::trim)
                    .filter(|l| l.len() >= 16)
                    .map(str::to_owned),
            );
        }
    }
    assert!(pem_lines.len() >= 2 * 20, "two private keys read");
    let (stdout, stderr) = server.stop();

    let mut secrets: Vec<(String, String)> = Vec::new();
    for (name, bearer) in [
        ("all", &setup.tokens.all),
        ("tokens_only", &setup.tokens.tokens_only),
        ("keys_only", &setup.tokens.keys_only),
    ] {
        secrets.push((format!("bearer {name}"), bearer.clone()));
    }
    for bearer in &wrong {
        secrets.push(("wrong bearer".into(), bearer.clone()));
    }
    for issued in &tokens {
        let jwt = issued["token"].as_str().unwrap();
        secrets.push(("issued JWT".into(), jwt.to_owned()));
        secrets.push((
            "JWT signature".into(),
            jwt.rsplit('.').next().unwrap().to_owned(),
        ));
    }
    for line in &pem_lines {
        secrets.push(("private key PEM line".into(), line.clone()));
    }
    secrets.push(("PEM marker".into(), "PRIVATE KEY".into()));
    for (what, secret) in &secrets {
        assert!(!stderr.contains(secret.as_str()), "{what} in stderr");
        assert!(!stdout.contains(secret.as_str()), "{what} in stdout");
    }

    // Every stderr line is a JSON object, and the audit events did go there.
    assert!(!stderr.is_empty());
    for line in stderr.lines() {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
        assert!(value.is_object(), "{line}");
    }
    for issued in &tokens {
        let jti = issued["jti"].as_str().unwrap();
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(jti) && l.contains("token_issued")),
            "no audit event for {jti}"
        );
    }
    assert!(
        stderr.contains("\"level\":\"DEBUG\""),
        "TFE_OIDC_LOG=debug shows debug events"
    );
}

#[test]
fn serve_with_embedded_defaults_listens_on_8443_and_8080_with_a_private_dev_token() {
    let busy: Vec<u16> = [8443, 8080]
        .into_iter()
        .filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_err())
        .collect();
    if !busy.is_empty() {
        eprintln!(
            "SKIPPED the embedded-defaults check: 127.0.0.1 port(s) {busy:?} are in use on this machine"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // As in a fresh checkout, where the README's first command runs: `keys/` exists, mode 0755
    // (git's umask), holding the repository's README.
    {
        use std::os::unix::fs::PermissionsExt;
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(keys.join("README.md"), "# keys\n").unwrap();
    }
    let mut command = tfe_oidc(dir.path());
    command.arg("serve");
    let api: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let mut server = Server::spawn(command, dir.path(), api);
    if let Err((status, stderr)) = server.wait_serving() {
        if stderr.contains("cannot listen") {
            eprintln!("SKIPPED the embedded-defaults check: a port was taken meanwhile:\n{stderr}");
            return;
        }
        panic!("serve with the embedded defaults exited with {status}:\n{stderr}");
    }
    assert!(
        dir.path().join("keys/README.md").exists(),
        "a file the store does not name survives"
    );
    let stderr = server.stderr();
    let token_path = dir.path().join("keys/api-token");
    assert!(
        stderr.contains("keys/api-token"),
        "the development token's path is printed:\n{stderr}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_owned();
    assert!(!stderr.contains(&token), "the token itself is not printed");
    for entry in std::fs::read_dir(dir.path().join("keys")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pem") {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }

    let discovery: SocketAddr = "127.0.0.1:8443".parse().unwrap();
    let (status, _, body) = http(
        discovery,
        "GET",
        "/.well-known/openid-configuration",
        &[],
        b"",
    );
    assert_eq!(status, 200);
    let metadata: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(metadata["issuer"], "http://127.0.0.1:8443");
    assert_eq!(
        metadata["jwks_uri"],
        "http://127.0.0.1:8443/.well-known/jwks"
    );
    let (status, body) = post_token(api, &token, &run_body("acme", "prod", "plan"));
    assert_eq!(status, 200, "{body}");
    assert!(jwks_kids(discovery).contains(&token_kid(body["token"].as_str().unwrap())));
    server.stop();
}
