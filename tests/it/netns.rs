//! The private network, for real: network namespaces joined by veth pairs to a bridge that
//! lives in its own "switch" namespace, on the test subnet 10.231.7.0/24 that exists only inside
//! them. Nothing is configured in the host's own namespace and no packet leaves the namespaces:
//! each namespace's resolver points at its own loopback, and the names the hosts use are in
//! per-namespace hosts files (`/etc/netns/<ns>/hosts`, which `ip netns exec` mounts).
//!
//! ```text
//!   issuer 10.231.7.10 ──┐
//!   vault  10.231.7.20 ──┼── br0 (switch namespace)
//!   outside 10.231.7.30 ─┘
//! ```
//!
//! The issuer host runs `tfe-oidc serve` on `deploy/tfe-oidc.toml` (addresses swapped for the
//! test subnet): discovery on its internal address over TLS with a CA from
//! `deploy/tls/make-certs.sh`, `allow` = the Vault host, the API on its own loopback (the
//! example's variant for TFE on the same host; the remote API's TLS and allow list are
//! `deploy.rs`'s and the package test's business). The Vault
//! host runs OpenBao wired by `deploy/vault/configure.sh`. The outside host only tries.
//!
//! Runs as root (CI does). Without root or `ip`, it fails in CI and skips only with
//! `TFE_OIDC_ALLOW_SKIP=1`. Everything is torn down by a guard, also when a test fails.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::Value;
use tempfile::TempDir;

use common::{Process, make_certs, require_tool, run_body, write_tokens_file};

const ISSUER_ADDR: &str = "10.231.7.10";
const VAULT_ADDR: &str = "10.231.7.20";
const OUTSIDE_ADDR: &str = "10.231.7.30";
const ISSUER: &str = "https://tfe-oidc.internal:8443";
const BAO: &str = "http://127.0.0.1:8200";
const API: &str = "http://127.0.0.1:8080";

/// Whether this process can build namespaces: root and `ip`. Same skip rules as `require_tool`.
fn require_netns() -> bool {
    if require_tool("ip").is_none() || require_tool("curl").is_none() {
        return false;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
    if root {
        return true;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !in_ci && std::env::var("TFE_OIDC_ALLOW_SKIP").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: network namespaces need root (TFE_OIDC_ALLOW_SKIP=1)");
        return false;
    }
    panic!(
        "the network namespace tests need root (CI runs them as root); set TFE_OIDC_ALLOW_SKIP=1 to skip them on a developer machine"
    );
}

/// Runs `ip <args>`, panicking with its output unless it succeeds.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The namespaces of one test: a switch with a bridge and three hosts. Dropping it deletes
/// them and their hosts files, whatever state the test left them in.
struct Topology {
    switch: String,
    issuer: String,
    vault: String,
    outside: String,
}

impl Topology {
    /// Unique names per process and test: `to<pid>-<n>-<role>`.
    fn build() -> Topology {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "to{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        );
        let topology = Topology {
            switch: format!("{tag}-sw"),
            issuer: format!("{tag}-iss"),
            vault: format!("{tag}-vault"),
            outside: format!("{tag}-out"),
        };
        ip(&["netns", "add", &topology.switch]);
        ip(&[
            "-n",
            &topology.switch,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
        ]);
        ip(&["-n", &topology.switch, "link", "set", "br0", "up"]);
        for (ns, addr) in topology.hosts() {
            topology.add_host(ns, addr);
        }
        topology
    }

    fn hosts(&self) -> [(&str, &str); 3] {
        [
            (&self.issuer, ISSUER_ADDR),
            (&self.vault, VAULT_ADDR),
            (&self.outside, OUTSIDE_ADDR),
        ]
    }

    /// A namespace with `eth0` at `addr`/24 on the bridge, loopback up, and /etc files that keep
    /// name lookups inside it.
    fn add_host(&self, ns: &str, addr: &str) {
        ip(&["netns", "add", ns]);
        let port = format!("p{}", &addr[addr.rfind('.').unwrap() + 1..]);
        let sw = self.switch.as_str();
        ip(&[
            "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        let etc = etc_dir(ns);
        std::fs::create_dir_all(&etc).unwrap();
        let hosts = format!("127.0.0.1 localhost\n{ISSUER_ADDR} tfe-oidc.internal\n");
        std::fs::write(etc.join("hosts"), hosts).unwrap();
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    }

    /// `ip netns exec <ns> <program>`.
    fn exec(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }

    fn names(&self) -> [&str; 4] {
        [&self.switch, &self.issuer, &self.vault, &self.outside]
    }
}

fn etc_dir(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.names() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let _ = std::fs::remove_dir_all(etc_dir(ns));
        }
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// The names `ip netns list` shows.
fn namespaces() -> Vec<String> {
    let output = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn run(mut command: Command) -> Output {
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `curl` in `ns`: exit code and body (`-w` appends the HTTP status, `000` without an answer).
fn curl(topology: &Topology, ns: &str, args: &[&str]) -> (i32, String) {
    let mut command = topology.exec(ns, "curl");
    command
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .args(args);
    let output = run(command);
    (output.status.code().unwrap_or(-1), stdout(&output))
}

/// The issuer host: certificates, the example configuration on the test subnet, and the server.
struct IssuerHost {
    dir: TempDir,
    api_token: String,
    _process: Process,
}

/// `deploy/tfe-oidc.toml` with the addresses and paths of this test, each replacement checked.
fn example_config(dir: &Path) -> String {
    let text = std::fs::read_to_string(common::deploy_dir().join("tfe-oidc.toml")).unwrap();
    let vault = format!("{VAULT_ADDR}/32");
    // The API that runners and Prometheus reach, back on loopback only.
    let remote_api = concat!(
        "listen = \"10.0.7.10:8080\"\n",
        "tls_cert = \"/etc/tfe-oidc/tls/api.pem\"\n",
        "tls_key = \"/etc/tfe-oidc/tls/api-key.pem\"\n",
        "allow = [\"10.0.7.0/24\", \"10.0.9.0/24\", \"10.0.6.5/32\"]\n",
    );
    let swaps = [
        (remote_api, "listen = \"127.0.0.1:8080\"\n".to_owned()),
        ("\"10.0.7.10:8443\"", format!("\"{ISSUER_ADDR}:8443\"")),
        (
            "[\"10.0.8.21/32\", \"10.0.8.22/32\"]",
            format!("[\"{vault}\"]"),
        ),
        ("/etc/tfe-oidc/tls/", format!("{}/tls/", dir.display())),
        (
            "/etc/tfe-oidc/api-tokens",
            format!("{}/api-tokens", dir.display()),
        ),
        ("/var/lib/tfe-oidc", format!("{}/keys", dir.display())),
        ("/var/log/tfe-oidc/", format!("{}/", dir.display())),
    ];
    swaps.iter().fold(text, |text, (from, to)| {
        assert!(
            text.contains(from),
            "deploy/tfe-oidc.toml no longer has {from}"
        );
        text.replace(from, to)
    })
}

fn start_issuer(topology: &Topology) -> Option<IssuerHost> {
    let dir = tempfile::tempdir().unwrap();
    make_certs(
        &dir.path().join("tls"),
        &format!("DNS:tfe-oidc.internal,IP:{ISSUER_ADDR}"),
    )?;
    let tokens = write_tokens_file(dir.path());
    let config = dir.path().join("tfe-oidc.toml");
    std::fs::write(&config, example_config(dir.path())).unwrap();
    let mut serve = topology.exec(&topology.issuer, common::binary());
    serve.args(["serve", "--config"]).arg(&config);
    let mut process = Process::spawn("tfe-oidc serve", serve, dir.path().join("serve.log"));
    process.wait_until(|| {
        curl(
            topology,
            &topology.issuer,
            &["-f", &format!("{API}/readyz")],
        )
        .0 == 0
    });
    Some(IssuerHost {
        dir,
        api_token: tokens.all,
        _process: process,
    })
}

/// OpenBao in the Vault host, on that host's loopback, wired by `deploy/vault/configure.sh`.
fn start_vault(topology: &Topology, ca: &Path) -> Option<(TempDir, Process)> {
    let bao = require_tool("bao")?;
    let home = tempfile::tempdir().unwrap();
    let mut server = topology.exec(&topology.vault, &bao);
    server
        .args([
            "server",
            "-dev",
            "-dev-root-token-id=root",
            "-dev-no-store-token",
        ])
        .arg("-dev-listen-address=127.0.0.1:8200")
        .env("HOME", home.path())
        .current_dir(home.path());
    let mut process = Process::spawn("bao server", server, home.path().join("bao.log"));
    let health = format!("{BAO}/v1/sys/health");
    process.wait_until(|| curl(topology, &topology.vault, &["-f", &health]).0 == 0);
    let mut configure = topology.exec(&topology.vault, "bash");
    configure
        .arg(common::deploy_dir().join("vault/configure.sh"))
        .envs([
            ("VAULT_CLI", bao.to_str().unwrap()),
            ("ISSUER", ISSUER),
            ("ORG", "acme"),
            ("WORKSPACE", "prod"),
        ])
        .envs([
            ("BAO_ADDR", BAO),
            ("VAULT_ADDR", BAO),
            ("BAO_TOKEN", "root"),
            ("VAULT_TOKEN", "root"),
        ])
        .env("CA_FILE", ca)
        .env("HOME", home.path());
    let output = run(configure);
    assert!(
        output.status.success(),
        "configure.sh in the Vault host: {}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((home, process))
}

/// A token minted through the issuer host's API, on its loopback.
fn mint(topology: &Topology, issuer: &IssuerHost) -> String {
    let body = run_body("acme", "prod", "apply").to_string();
    let auth = format!("Authorization: Bearer {}", issuer.api_token);
    let url = format!("{API}/v1/tokens");
    let args = [
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &url,
    ];
    let (code, out) = curl(topology, &topology.issuer, &args);
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!((code, status), (0, "200"), "minting: {out}");
    let minted: Value = serde_json::from_str(body).unwrap();
    minted["token"].as_str().unwrap().to_owned()
}

/// `tfe-oidc validate` in `ns`: exit code and JSON report.
fn validate(topology: &Topology, ns: &str, args: &[&str]) -> (i32, Value) {
    let mut command = topology.exec(ns, common::binary());
    command
        .args(["validate", "--issuer", ISSUER, "--format", "json"])
        .args(args);
    let output = run(command);
    let report = serde_json::from_str(&stdout(&output))
        .unwrap_or_else(|e| panic!("validate in {ns}: {e}: {}", stdout(&output)));
    (output.status.code().unwrap_or(-1), report)
}

fn refused_count(topology: &Topology) -> u64 {
    let (code, text) = curl(topology, &topology.issuer, &[&format!("{API}/metrics")]);
    assert_eq!(code, 0, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("tfe_oidc_discovery_refused_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn only_the_vault_host_reaches_discovery_and_nobody_else_reaches_anything() {
    if !require_netns() {
        return;
    }
    let started = Instant::now();
    let topology = Topology::build();
    let Some(issuer) = start_issuer(&topology) else {
        return;
    };
    let ca = issuer.dir.path().join("tls/ca.pem");
    let ca_arg = ca.to_str().unwrap();
    let Some((_bao_home, _bao)) = start_vault(&topology, &ca) else {
        return;
    };
    assert_eq!(refused_count(&topology), 0, "the Vault host was refused");

    // The Vault host: a login with a token from the issuer, and validate passes.
    let token = mint(&topology, &issuer);
    let login = format!(r#"{{"role":"tfe-acme-prod","jwt":"{token}"}}"#);
    let (code, out) = curl(
        &topology,
        &topology.vault,
        &[
            "-X",
            "POST",
            "-d",
            &login,
            &format!("{BAO}/v1/auth/jwt/login"),
        ],
    );
    assert!(
        code == 0 && out.contains("\"client_token\""),
        "OpenBao refused the login: {out}"
    );
    let token_file = issuer.dir.path().join("token.jwt");
    std::fs::write(&token_file, &token).unwrap();
    let (code, report) = validate(
        &topology,
        &topology.vault,
        &["--ca-file", ca_arg, "--token", token_file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "validate in the Vault host: {report:#}");
    assert_eq!(report["checks"].as_array().unwrap().len(), 16);
    assert!(
        report["checks"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("resolves to 10.231.7.10")
    );
    let (code, report) = validate(
        &topology,
        &topology.vault,
        &["--ca-file", ca_arg, "--expect-unreachable"],
    );
    assert_eq!(code, 1, "discovery answers the Vault host: {report:#}");
    // ... but not the API, which listens on the issuer host's loopback only.
    let (code, out) = curl(
        &topology,
        &topology.vault,
        &[&format!("http://{ISSUER_ADDR}:8080/healthz")],
    );
    assert_eq!(code, 7, "the API answered the Vault host: {out}");

    // The outside host: refused before any answer, and counted.
    let (code, report) = validate(
        &topology,
        &topology.outside,
        &["--ca-file", ca_arg, "--expect-unreachable"],
    );
    assert_eq!(code, 0, "validate --expect-unreachable outside: {report:#}");
    let discovery = format!("{ISSUER}/.well-known/openid-configuration");
    let (code, out) = curl(
        &topology,
        &topology.outside,
        &["--cacert", ca_arg, &discovery],
    );
    assert!(
        code != 0 && out.ends_with("000"),
        "curl from outside got an answer ({code}): {out}"
    );
    let (code, report) = validate(&topology, &topology.outside, &["--ca-file", ca_arg]);
    assert_eq!(code, 1);
    let tls = &report["checks"][3];
    assert!(
        tls["detail"]
            .as_str()
            .unwrap()
            .contains("closed the connection"),
        "{tls}"
    );
    assert!(
        tls["fix"].as_str().unwrap().contains("discovery.allow"),
        "{tls}"
    );
    let (code, _) = curl(
        &topology,
        &topology.outside,
        &[&format!("http://{ISSUER_ADDR}:8080/healthz")],
    );
    assert_eq!(code, 7, "the API answered the outside host");
    assert!(refused_count(&topology) >= 3, "refusals not counted");

    // A name nobody publishes does not resolve, and the lookup stays in the namespace.
    let mut command = topology.exec(&topology.outside, common::binary());
    command.args([
        "validate",
        "--issuer",
        "https://nowhere.internal:8443",
        "--format",
        "json",
    ]);
    let output = run(command);
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["checks"][1]["name"], "dns");
    assert_eq!(report["checks"][1]["ok"], false, "{report:#}");
    drop(issuer);
    eprintln!(
        "netns topology test: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_namespaces_are_deleted_even_when_a_test_fails() {
    if !require_netns() {
        return;
    }
    let names = std::thread::spawn(|| {
        let topology = Topology::build();
        let names: Vec<String> = topology.names().iter().map(|n| n.to_string()).collect();
        assert!(namespaces().contains(&names[0]));
        std::panic::panic_any(names);
    })
    .join()
    .expect_err("the thread panicked on purpose");
    let names = names.downcast::<Vec<String>>().unwrap();
    let left = namespaces();
    for name in names.iter() {
        assert!(
            !left.contains(name),
            "{name} survived the failed test: {left:?}"
        );
        assert!(
            !etc_dir(name).exists(),
            "{name}'s /etc/netns files survived"
        );
    }
}
