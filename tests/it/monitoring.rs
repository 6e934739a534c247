//! deploy/monitoring with the real tools: `promtool` checks and unit-tests the alert rules, and a
//! real Prometheus server (Debian's `prometheus`, started here on loopback with a temporary
//! configuration and storage) scrapes a real `tfe-oidc serve` every second. Through Prometheus's
//! HTTP API, every dashboard query and every alert expression must evaluate and return series,
//! and TfeOidcRotationStopped is made to fire for real by a key store on a tmpfs that fills up.

use crate::common;

use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ApiTokens, binary, free_port, require_tool, run_body, write_tokens_file};
use serde_json::{Value, json};

const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/monitoring");

fn monitoring(file: &str) -> PathBuf {
    Path::new(MONITORING).join(file)
}

/// Runs `command`, panicking with its output unless it exits 0.
fn run_ok(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_the_alert_rules() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let out = run_ok(
        Command::new(promtool)
            .arg("check")
            .arg("rules")
            .arg(monitoring("alerts.yml")),
    );
    let alerts = std::fs::read_to_string(monitoring("alerts.yml"))
        .unwrap()
        .matches("- alert: ")
        .count();
    assert!(
        out.contains(&format!("SUCCESS: {alerts} rules found")),
        "{out}"
    );
}

/// deploy/monitoring/tests/alerts_test.yml drives each alert to firing on synthetic series and
/// shows it quiet on a healthy instance; every alert of the rules file must have such a test.
#[test]
fn promtool_unit_tests_fire_every_alert_and_keep_healthy_series_quiet() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let tests = monitoring("tests/alerts_test.yml");
    run_ok(Command::new(promtool).arg("test").arg("rules").arg(&tests));
    let tests = std::fs::read_to_string(tests).unwrap();
    for name in alert_names() {
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - "
            )),
            "no unit test makes {name} fire"
        );
    }
}

fn alert_names() -> Vec<String> {
    std::fs::read_to_string(monitoring("alerts.yml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: ").map(str::to_owned))
        .collect()
}

/// A child process killed when dropped; its output goes to `log`.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(command: &mut Command, log: PathBuf) -> Process {
        let out = File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `tfe-oidc serve` process on two free loopback ports.
struct Serve {
    process: Process,
    api: SocketAddr,
    discovery: SocketAddr,
    tokens: ApiTokens,
    closed_vault: String,
}

impl Serve {
    /// Starts serve on `keys_dir` with extra `[discovery]` and `[keys]` lines; waits for /readyz.
    /// Its one allowed Vault address is a loopback port where nothing listens.
    async fn start(dir: &Path, keys_dir: &Path, discovery_toml: &str, keys_toml: &str) -> Serve {
        let tokens = write_tokens_file(dir);
        let discovery: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let closed_vault = format!("http://127.0.0.1:{}", free_port());
        let config = dir.join("tfe-oidc.toml");
        std::fs::write(
            &config,
            format!(
                "issuer = \"http://{discovery}\"\n\
                 [exchange]\nallowed_vault_addrs = [\"{closed_vault}\"]\n\
                 [discovery]\nlisten = \"{discovery}\"\n{discovery_toml}\n\
                 [api]\nlisten = \"{api}\"\ntokens_file = {:?}\n\
                 [keys]\ndir = {keys_dir:?}\n{keys_toml}\n",
                dir.join("api-tokens")
            ),
        )
        .unwrap();
        let process = Process::spawn(
            Command::new(binary())
                .current_dir(dir)
                .arg("serve")
                .arg("--config")
                .arg(&config),
            dir.join("serve.log"),
        );
        let serve = Serve {
            process,
            api,
            discovery,
            tokens,
            closed_vault,
        };
        let url = serve.api_url("/readyz");
        wait_for("tfe-oidc serve to be ready", || async {
            let ok = reqwest::get(&url).await.is_ok_and(|r| r.status() == 200);
            ok.then_some(()).ok_or_else(|| serve.process.log())
        })
        .await;
        serve
    }

    fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    fn discovery_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.discovery)
    }

    async fn post_token(&self, bearer: &str) -> u16 {
        reqwest::Client::new()
            .post(self.api_url("/v1/tokens"))
            .bearer_auth(bearer)
            .json(&run_body("acme", "prod", "apply"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// Polls `probe` every 200 ms for up to 45 s; the last `Err` explains a timeout.
async fn wait_for<T, F, Fut>(what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(why) if Instant::now() > deadline => panic!("timed out waiting for {what}: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A Prometheus server scraping one tfe-oidc API listener every second and evaluating `rules`
/// every second.
struct Prometheus {
    process: Process,
    url: String,
}

impl Prometheus {
    async fn start(dir: &Path, binary: &Path, target: SocketAddr, rules: &Path) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n  - job_name: tfe-oidc\n    static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let process = Process::spawn(
            Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={listen}"))
                .arg("--log.level=warn"),
            dir.join("prometheus.log"),
        );
        let prometheus = Prometheus {
            process,
            url: format!("http://{listen}"),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        wait_for("prometheus to be ready", || async {
            let ok = reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200);
            ok.then_some(()).ok_or_else(|| prometheus.process.log())
        })
        .await;
        prometheus
    }

    /// `GET /api/v1/<path>`'s `data`, or the error Prometheus gave.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        match body["status"].as_str() {
            Some("success") => Ok(body["data"].clone()),
            _ => Err(format!("{} {}", body["errorType"], body["error"])),
        }
    }

    /// The instant vector of `expr` now.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", expr)]).await?;
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            other => Err(format!("result type {other:?}, not a vector")),
        }
    }

    /// Waits until `expr` returns at least one series.
    async fn wait_series(&self, expr: &str) -> Vec<Value> {
        wait_for(expr, || async {
            match self.query(expr).await {
                Ok(v) if !v.is_empty() => Ok(v),
                Ok(_) => Err("no series".into()),
                Err(e) => Err(e),
            }
        })
        .await
    }
}

/// Every series selector of a PromQL expression (`name{matchers}` or `name`), for the metrics
/// these files use: tfe-oidc's own, the process metrics and `up`.
fn selectors(expr: &str) -> Vec<&str> {
    let mut found: Vec<&str> = ["tfe_oidc_", "process_", "up{"]
        .iter()
        .flat_map(|prefix| expr.match_indices(prefix))
        .filter(|(i, _)| !expr[..*i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(i, _)| {
            let rest = &expr[i..];
            let name = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            match rest[name..].starts_with('{') {
                true => &rest[..name + rest[name..].find('}').unwrap() + 1],
                false => &rest[..name],
            }
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Whether a selector may select nothing on a server that the tests have sent traffic to:
/// token issuance's server errors, which a healthy server does not make.
fn may_be_empty(selector: &str) -> bool {
    selector.contains(r#"status=~"5..""#)
}

/// How a dashboard query shows 0 rather than nothing while its series do not exist yet (a
/// server that has not called Vault, or refused a token, yet).
const FALLBACK: &str = " or on() vector(0)";

/// What is wrong with `expr` on a live Prometheus: it must evaluate, return series unless it is
/// an alert condition (`condition`: quiet on a healthy server), also without its `FALLBACK`, and
/// every selector in it must select series (but `may_be_empty`).
async fn problems_of(
    prometheus: &Prometheus,
    what: &str,
    expr: &str,
    condition: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    match prometheus.query(expr).await {
        Err(e) => problems.push(format!("{what}: {expr}\n    does not evaluate: {e}")),
        Ok(v) if v.is_empty() && !condition => {
            problems.push(format!("{what}: {expr}\n    returns no series"))
        }
        Ok(_) => {}
    }
    // The traffic makes every series exist: the fallback must not be what returns a series.
    let bare = expr.replace(FALLBACK, "");
    if !condition && bare != expr {
        match prometheus.query(&bare).await {
            Ok(v) if !v.is_empty() => {}
            other => problems.push(format!(
                "{what}: {bare}\n    returns no series without{FALLBACK}: {other:?}"
            )),
        }
    }
    for selector in selectors(expr) {
        if may_be_empty(selector) {
            continue;
        }
        let selected = prometheus.query(selector).await;
        if !selected.as_ref().is_ok_and(|v| !v.is_empty()) {
            problems.push(format!("{what}: {selector} selects nothing: {selected:?}"));
        }
    }
    problems
}

/// JWKS and configuration fetches (some answered 304), tokens issued and refused, a 404, a peer
/// refused by `discovery.allow` and connections refused at the discovery connection limit.
async fn generate_traffic(serve: &Serve) {
    let client = reqwest::Client::new();
    let jwks = serve.discovery_url("/.well-known/jwks");
    let first = client.get(&jwks).send().await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    for _ in 0..10 {
        let plain = client.get(&jwks).send().await.unwrap();
        assert_eq!(plain.status(), 200);
        let cached = client.get(&jwks).header("if-none-match", &etag);
        assert_eq!(cached.send().await.unwrap().status(), 304);
        let configuration = serve.discovery_url("/.well-known/openid-configuration");
        assert_eq!(
            client.get(configuration).send().await.unwrap().status(),
            200
        );
    }
    let missing = client.get(serve.discovery_url("/nothing")).send().await;
    assert_eq!(missing.unwrap().status(), 404);
    drop(client);
    for _ in 0..5 {
        assert_eq!(serve.post_token(&serve.tokens.all).await, 200);
    }
    assert_eq!(serve.post_token("not-a-token").await, 401);
    // A credential exchange whose Vault (allowed, but nothing listens there) cannot be reached:
    // a Vault call counted with outcome `unreachable`, answered 502.
    let variables = json!({
        "TFC_VAULT_PROVIDER_AUTH": "true",
        "TFC_VAULT_ADDR": serve.closed_vault,
        "TFC_VAULT_RUN_ROLE": "tfe-acme-prod",
    });
    let exchange = reqwest::Client::new()
        .post(serve.api_url("/v1/credentials"))
        .bearer_auth(&serve.tokens.all)
        .json(&json!({"run": run_body("acme", "prod", "plan"), "variables": variables}))
        .send()
        .await
        .unwrap();
    assert_eq!(exchange.status(), 502, "{:?}", exchange.text().await);
    // 127.0.0.2 is loopback too, but outside discovery.allow = ["127.0.0.1/32"].
    let outsider = tokio::net::TcpSocket::new_v4().unwrap();
    outsider.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let refused = outsider.connect(serve.discovery).await.unwrap();
    // More idle connections than discovery.max_connections = 2: the last ones are refused.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tokio::net::TcpStream::connect(serve.discovery)
                .await
                .unwrap(),
        );
    }
    let metrics = serve.api_url("/metrics");
    wait_for("refused connections in /metrics", || async {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        let counted = text.contains("tfe_oidc_discovery_refused_total 1")
            && !text.contains("tfe_oidc_http_connections_refused_total{listener=\"discovery\"} 0");
        counted.then_some(()).ok_or(text)
    })
    .await;
    drop((refused, held));
}

/// The dashboard's queries, with Grafana's variables as a dashboard showing every instance
/// would send them.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring("dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel without a query: {panel}");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$job", ".+")
                .replace("$instance", ".+")
                .replace("$__rate_interval", "15s");
            let what = format!("panel {:?} query {}", panel["title"], target["refId"]);
            queries.push((what, expr));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_expression_returns_series_from_a_real_scrape() {
    let Some(prometheus_binary) = require_tool("prometheus") else {
        return;
    };
    common::init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let discovery_toml = "allow = [\"127.0.0.1/32\"]\nmax_connections = 2";
    let serve = Serve::start(dir.path(), &dir.path().join("keys"), discovery_toml, "").await;
    let prometheus = Prometheus::start(
        dir.path(),
        &prometheus_binary,
        serve.api,
        &monitoring("alerts.yml"),
    )
    .await;
    generate_traffic(&serve).await;
    // Wait until Prometheus has scraped the traffic, and has two samples of it for rate().
    prometheus
        .wait_series(r#"count_over_time(tfe_oidc_http_connections_refused_total{listener="discovery"}[15s]) > 2 and tfe_oidc_http_connections_refused_total > 0"#)
        .await;

    let mut problems = Vec::new();
    let queries = dashboard_queries();
    for (what, expr) in &queries {
        problems.extend(problems_of(&prometheus, what, expr, false).await);
    }
    let rules = prometheus.api("rules", &[]).await.unwrap();
    let runbook = std::fs::read_to_string(monitoring("README.md")).unwrap();
    let mut alerts = 0;
    for rule in rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
    {
        let name = rule["name"].as_str().unwrap();
        alerts += 1;
        problems.extend(alert_problems(rule, &runbook));
        let what = format!("alert {name}");
        let expr = rule["query"].as_str().unwrap();
        problems.extend(problems_of(&prometheus, &what, expr, true).await);
        if rule["state"] == "firing" {
            problems.push(format!("{what} fires on a healthy server: {rule}"));
        }
    }
    assert_eq!(alerts, alert_names().len(), "Prometheus loaded {rules}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The metrics only this server can say, with the values it should have.
    let value = |expr: &'static str| {
        let prometheus = &prometheus;
        async move {
            let v = prometheus.wait_series(expr).await;
            v[0]["value"][1].as_str().unwrap().parse::<f64>().unwrap()
        }
    };
    assert_eq!(value("tfe_oidc_key_rotation_period_seconds").await, 86400.0);
    assert_eq!(value(r#"tfe_oidc_keys{state="next"}"#).await, 1.0);
    assert_eq!(value(r#"tfe_oidc_keys{state="current"}"#).await, 1.0);
    assert_eq!(value("tfe_oidc_key_store_healthy").await, 1.0);
    assert_eq!(value("tfe_oidc_key_rotation_failures_total").await, 0.0);
    assert!(value("time() - tfe_oidc_last_rotation_timestamp_seconds").await < 120.0);
    assert!(value("time() - process_start_time_seconds").await < 120.0);
    // The start time is read from /proc at every scrape: it must not move, or the restart alert
    // would count scrapes as restarts.
    assert_eq!(value("changes(process_start_time_seconds[1m])").await, 0.0);
    assert!(value("process_resident_memory_bytes").await > 1e6);
    assert!(value("process_open_fds").await >= 3.0);
    eprintln!(
        "{} dashboard queries and {alerts} alert expressions checked",
        queries.len()
    );
}

/// What an alert rule as Prometheus loaded it lacks: a severity, a summary, a description, and a
/// runbook_url whose anchor is a heading of the runbook.
fn alert_problems(rule: &Value, runbook: &str) -> Vec<String> {
    let name = rule["name"].as_str().unwrap();
    let mut problems = Vec::new();
    if !matches!(
        rule["labels"]["severity"].as_str(),
        Some("critical" | "warning")
    ) {
        problems.push(format!("alert {name}: severity is not critical or warning"));
    }
    for key in ["summary", "description", "runbook_url"] {
        if rule["annotations"][key].as_str().is_none_or(str::is_empty) {
            problems.push(format!("alert {name}: no {key} annotation"));
        }
    }
    if rule["lastError"].as_str().is_some_and(|e| !e.is_empty()) {
        problems.push(format!(
            "alert {name}: Prometheus failed to evaluate it: {}",
            rule["lastError"]
        ));
    }
    let url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
    let anchor = format!("deploy/monitoring/README.md#{}", name.to_lowercase());
    if !url.ends_with(&anchor) || !runbook.contains(&format!("\n### {name}\n")) {
        problems.push(format!(
            "alert {name}: runbook_url {url:?} is not {anchor} with a `### {name}` heading"
        ));
    }
    problems
}

/// Unmounts a tmpfs when dropped, even when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` on `path`; `None` when skipping is allowed and mount is refused.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tfe-oidc-test",
            ])
            .arg(path)
            .output()
            .unwrap();
        if out.status.success() {
            return Some(Tmpfs(path.to_owned()));
        }
        let why = String::from_utf8_lossy(&out.stderr);
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        if !in_ci && std::env::var("TFE_OIDC_ALLOW_SKIP").is_ok_and(|v| v == "1") {
            eprintln!("SKIPPED: cannot mount a tmpfs (root is needed): {why}");
            return None;
        }
        panic!(
            "cannot mount a tmpfs on {} (the test runs as root in CI): {why}",
            path.display()
        );
    }

    /// Writes a file until the file system has no space left.
    fn fill(&self) {
        let mut file = File::create(self.0.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// With a rotation period of 4 s, a key store that fills up makes every key write fail: the
/// current key keeps signing and ages past 1.5 × the period, and Prometheus fires
/// TfeOidcRotationStopped. Prometheus loads a copy of alerts.yml whose every `for:` is 1s
/// instead of minutes, so that the alert fires within the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_stopped_fires_for_real_when_the_key_store_fills_up() {
    let Some(prometheus_binary) = require_tool("prometheus") else {
        return;
    };
    common::init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("tmpfs"), "256k") else {
        return;
    };
    let rules = dir.path().join("alerts.yml");
    let original = std::fs::read_to_string(monitoring("alerts.yml")).unwrap();
    let shortened: Vec<String> = original
        .lines()
        .map(|l| match l.find("for: ") {
            Some(i) if l.trim_start().starts_with("for: ") => format!("{}for: 1s", &l[..i]),
            _ => l.to_owned(),
        })
        .collect();
    std::fs::write(&rules, shortened.join("\n")).unwrap();
    let serve = Serve::start(
        dir.path(),
        &tmpfs.0.join("keys"),
        "jwks_max_age = \"1s\"",
        "rotation_period = \"4s\"",
    )
    .await;
    let prometheus = Prometheus::start(dir.path(), &prometheus_binary, serve.api, &rules).await;
    // The rotator works until the store fills up.
    prometheus
        .wait_series("tfe_oidc_key_rotations_total >= 1")
        .await;
    let rotation_stopped = || async {
        let data = prometheus.api("alerts", &[]).await.unwrap();
        let alerts = data["alerts"].as_array().unwrap().iter();
        let mut ours = alerts.filter(|a| a["labels"]["alertname"] == "TfeOidcRotationStopped");
        (ours.next().cloned(), data)
    };
    // Quiet while rotations work (pending is tolerated: a key generation slowed down by a busy
    // machine can delay a 4 s rotation by a second or two).
    let (before, data) = rotation_stopped().await;
    let firing = before.is_some_and(|a| a["state"] == "firing");
    assert!(!firing, "the alert fires while rotations work: {data}");
    tmpfs.fill();
    let filled = Instant::now();
    let alert = wait_for("TfeOidcRotationStopped to fire", || async {
        match rotation_stopped().await {
            (Some(alert), _) if alert["state"] == "firing" => Ok(alert),
            (_, data) => Err(format!("{data}\n{}", serve.process.log())),
        }
    })
    .await;
    eprintln!(
        "TfeOidcRotationStopped fired {:?} after the store filled up: {alert}",
        filled.elapsed()
    );
    assert_eq!(alert["labels"]["instance"], serve.api.to_string());
    assert_eq!(alert["labels"]["severity"], "warning");
    assert!(
        alert["value"].as_str().unwrap().parse::<f64>().unwrap() > 6.0,
        "{alert}"
    );
    let failures = prometheus
        .wait_series("tfe_oidc_key_rotation_failures_total > 0")
        .await;
    eprintln!("scheduled key changes failed: {failures:?}");
    // The current key keeps signing all the while.
    assert_eq!(serve.post_token(&serve.tokens.all).await, 200);
    assert!(
        serve.process.log().contains("key rotation failed"),
        "{}",
        serve.process.log()
    );
    drop((prometheus, serve));
    drop(tmpfs);
}
