//! The shared test harness: a real service on real loopback sockets, a real key store in a
//! temporary directory, test PKI made at run time, HTTP clients, and the external tools (Python
//! JOSE verifiers, the `bao` server) that the tests drive.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Once};

use serde_json::{Value, json};
use tempfile::TempDir;
use tfe_oidc::config::Config;
use tfe_oidc::http::auth::{Scope, new_token, tokens_file_line};
use tfe_oidc::keys::{Clock, FakeClock, SystemClock};
use tfe_oidc::service::{self, Running};

pub mod bao;
pub mod process;
pub mod raft;
pub mod raw;

/// Installs aws-lc-rs as the process's rustls provider (reqwest is built without one).
pub fn init_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA made at test time, with a server certificate for 127.0.0.1 and localhost and a client
/// certificate, written as PEM files into `dir`.
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub ca_pem: String,
}

impl TestPki {
    pub fn new(dir: &Path) -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            SanType,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tfe-oidc test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "vault");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &issuer).unwrap();

        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        TestPki {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert.pem()),
            server_key: write("server-key.pem", server_key.serialize_pem()),
            client_cert: write("client.pem", client_cert.pem()),
            client_key: write("client-key.pem", client_key.serialize_pem()),
            ca_pem: ca_cert.pem(),
        }
    }
}

/// API bearer tokens of the test server, one per scope set.
#[derive(Debug, Clone)]
pub struct ApiTokens {
    pub all: String,
    pub tokens_only: String,
    pub keys_only: String,
}

/// A service running in this process, on a fresh key directory, with its own ports.
pub struct TestServer {
    /// Unique among every service this test process started, restarts included.
    pub id: usize,
    pub dir: TempDir,
    pub config: Config,
    pub running: Running,
    pub tokens: ApiTokens,
    pub clock: Option<FakeClock>,
    pub pki: Option<TestPki>,
}

/// How to start a test server.
#[derive(Default)]
pub struct Options {
    /// TOML appended to the generated configuration (its own sections).
    pub extra_toml: String,
    /// TOML keys added to the `[discovery]` section.
    pub discovery_toml: String,
    /// TOML keys added to the `[api]` section (e.g. `max_body = "1KiB"`).
    pub api_toml: String,
    /// TOML keys added to the `[keys]` section (e.g. `rotation_period = "4s"`).
    pub keys_toml: String,
    /// A fake clock for the key manager and issuance; the system clock otherwise.
    pub clock: Option<FakeClock>,
    /// Serve the discovery listener over TLS with a test CA.
    pub tls: bool,
    /// Start on this existing key directory instead of a new one.
    pub dir: Option<TempDir>,
    /// With `tls`: require client certificates from the test CA (`client_ca = <pki.ca>`).
    pub client_ca: bool,
}

fn next_server_id() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl TestServer {
    pub async fn start(options: Options) -> TestServer {
        init_crypto();
        let dir = options.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let pki = options.tls.then(|| TestPki::new(dir.path()));
        let tokens = write_tokens_file(dir.path());
        let discovery_toml = match (&pki, options.client_ca) {
            (Some(p), true) => format!("client_ca = {:?}\n{}", p.ca, options.discovery_toml),
            (None, true) => panic!("Options.client_ca needs Options.tls"),
            (_, false) => options.discovery_toml.clone(),
        };
        let text = test_config_text_with(
            dir.path(),
            pki.as_ref(),
            &discovery_toml,
            &options.api_toml,
            &options.extra_toml,
        );
        // The generated text ends inside the `[keys]` section.
        let text = format!("{text}{}\n", options.keys_toml);
        let config = Config::from_parts(&text, &[], None)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        let clock: Arc<dyn Clock> = match &options.clock {
            Some(fake) => Arc::new(fake.clone()),
            None => Arc::new(SystemClock),
        };
        let running = service::start(&config, clock)
            .await
            .unwrap_or_else(|e| panic!("service did not start: {e}"));
        TestServer {
            id: next_server_id(),
            dir,
            config,
            running,
            tokens,
            clock: options.clock,
            pki,
        }
    }

    pub async fn stop(self) -> TempDir {
        self.running.shutdown().await;
        self.dir
    }

    /// Stops the service but keeps everything needed to start it again exactly as it was: the
    /// key directory, the configuration (ports, issuer), the TLS files and the API tokens.
    pub async fn pause(self) -> Stopped {
        self.running.shutdown().await;
        Stopped {
            dir: self.dir,
            config: self.config,
            tokens: self.tokens,
            clock: self.clock,
            pki: self.pki,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.api_addr)
    }

    pub fn discovery_url(&self, path: &str) -> String {
        format!("{}{path}", self.config.issuer)
    }

    /// A client that trusts the test CA when the discovery listener has TLS.
    pub fn client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder();
        if let Some(pki) = &self.pki {
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap(),
            );
        }
        builder.build().unwrap()
    }

    /// `POST /v1/tokens` with the all-scopes token; returns status and JSON body.
    pub async fn post_token(&self, body: &Value) -> (u16, Value) {
        self.post_as("/v1/tokens", &self.tokens.all, body).await
    }

    /// `POST <path>` on the API with `bearer`: the status and the JSON body (`null` when the
    /// body is not JSON).
    pub async fn post_as(&self, path: &str, bearer: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client()
            .post(self.api_url(path))
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Mints a token for `workspace` in `phase`, panicking unless the API answers 200.
    pub async fn mint(&self, workspace: &str, phase: &str) -> Value {
        let (status, body) = self.post_token(&run_body("acme", workspace, phase)).await;
        assert_eq!(status, 200, "minting failed: {body}");
        body
    }

    /// Mints the token of `body`, panicking unless the API answers 200.
    pub async fn mint_body(&self, body: &Value) -> Value {
        let (status, answer) = self.post_token(body).await;
        assert_eq!(status, 200, "minting {body} failed: {answer}");
        answer
    }

    pub async fn jwks(&self) -> Value {
        self.client()
            .get(self.discovery_url("/.well-known/jwks"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// A test server stopped by `TestServer::pause`.
pub struct Stopped {
    pub dir: TempDir,
    pub config: Config,
    pub tokens: ApiTokens,
    pub clock: Option<FakeClock>,
    pub pki: Option<TestPki>,
}

impl Stopped {
    /// Starts the service again on the same key directory, ports, issuer, TLS files and tokens.
    pub async fn start(self) -> TestServer {
        let clock: Arc<dyn Clock> = match &self.clock {
            Some(fake) => Arc::new(fake.clone()),
            None => Arc::new(SystemClock),
        };
        let running = service::start(&self.config, clock)
            .await
            .unwrap_or_else(|e| panic!("service did not restart: {e}"));
        TestServer {
            id: next_server_id(),
            dir: self.dir,
            config: self.config,
            running,
            tokens: self.tokens,
            clock: self.clock,
            pki: self.pki,
        }
    }
}

/// The TOML of a test configuration on free loopback ports.
pub fn test_config(
    dir: &Path,
    pki: Option<&TestPki>,
    discovery_toml: &str,
    extra_toml: &str,
) -> Config {
    let text = test_config_text(dir, pki, discovery_toml, extra_toml);
    Config::from_parts(&text, &[], None)
        .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"))
}

pub fn test_config_text(
    dir: &Path,
    pki: Option<&TestPki>,
    discovery_toml: &str,
    extra_toml: &str,
) -> String {
    test_config_text_with(dir, pki, discovery_toml, "", extra_toml)
}

/// `test_config_text` with extra keys in the `[api]` section too.
pub fn test_config_text_with(
    dir: &Path,
    pki: Option<&TestPki>,
    discovery_toml: &str,
    api_toml: &str,
    extra_toml: &str,
) -> String {
    let (dport, aport) = (free_port(), free_port());
    let scheme = if pki.is_some() { "https" } else { "http" };
    let tls = match pki {
        Some(p) => format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            p.server_cert, p.server_key
        ),
        None => String::new(),
    };
    format!(
        "issuer = \"{scheme}://127.0.0.1:{dport}\"\n{extra_toml}\n\
         [discovery]\nlisten = \"127.0.0.1:{dport}\"\n{tls}{discovery_toml}\n\
         [api]\nlisten = \"127.0.0.1:{aport}\"\ntokens_file = {:?}\n{api_toml}\n\
         [keys]\ndir = {:?}\n",
        dir.join("api-tokens"),
        dir.join("keys"),
    )
}

/// Writes `<dir>/api-tokens` with three callers and returns their bearer tokens.
pub fn write_tokens_file(dir: &Path) -> ApiTokens {
    let (all, tokens_only, keys_only) = (new_token(), new_token(), new_token());
    let text = format!(
        "# test callers\n{}\n{}\n{}\n",
        tokens_file_line(&all, "tfe", &Scope::ALL),
        tokens_file_line(&tokens_only, "runner", &[Scope::Tokens]),
        tokens_file_line(&keys_only, "operator", &[Scope::Keys]),
    );
    std::fs::write(dir.join("api-tokens"), text).unwrap();
    ApiTokens {
        all: all.0,
        tokens_only: tokens_only.0,
        keys_only: keys_only.0,
    }
}

/// A valid `POST /v1/tokens` body.
pub fn run_body(org: &str, workspace: &str, phase: &str) -> Value {
    json!({
        "organization": {"id": "org-GRNbCjYNpBB6NEH9", "name": org},
        "project": {"id": "prj-vegSA59s1XPwMr2t", "name": "Default Project"},
        "workspace": {"id": "ws-mbsd5E3Ktt5Rg2Xm", "name": workspace},
        "run": {"id": "run-X3n1AUXNGWbfECsJ", "phase": phase},
    })
}

/// A valid `POST /v1/tokens` body for a module-test token of `module` in organization `org`.
pub fn module_test_body(org: &str, module: &str) -> Value {
    json!({
        "organization": {"id": "org-GRNbCjYNpBB6NEH9", "name": org},
        "module": {"name": module},
        "run": {"id": "trun-KFg8DSiRz4E37mdJ", "phase": "plan"},
    })
}

/// A valid `POST /v1/tokens` body for a Stacks deployment token of acme's stack `network` in
/// `Default Project`.
pub fn stack_body(deployment: &str, operation: &str) -> Value {
    json!({
        "organization": {"id": "org-GRNbCjYNpBB6NEH9", "name": "acme"},
        "project": {"id": "prj-vegSA59s1XPwMr2t", "name": "Default Project"},
        "stack": {"id": "st-Ab12Cd34Ef56Gh78", "name": "network"},
        "deployment": {"name": deployment},
        "operation": operation,
        "plan": {"id": "sp-Zx98Yw76Vu54Ts32"},
    })
}

/// The kids of a JWKS document.
pub fn jwks_kids(jwks: &Value) -> BTreeSet<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// `token issue` flags naming the run of `run_body("acme", "prod", _)`, without `--phase`.
pub const RUN_FLAGS: &[&str] = &[
    "--org",
    "acme",
    "--org-id",
    "org-GRNbCjYNpBB6NEH9",
    "--project",
    "Default Project",
    "--project-id",
    "prj-vegSA59s1XPwMr2t",
    "--workspace",
    "prod",
    "--workspace-id",
    "ws-mbsd5E3Ktt5Rg2Xm",
    "--run-id",
    "run-X3n1AUXNGWbfECsJ",
];

/// The path of an external tool, or `None` when it is missing and skipping is allowed
/// (`TFE_OIDC_ALLOW_SKIP=1`, never in CI). Otherwise a missing tool fails the test.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_some() {
        return found;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !in_ci && std::env::var("TFE_OIDC_ALLOW_SKIP").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: {name} is not installed (TFE_OIDC_ALLOW_SKIP=1)");
        return None;
    }
    panic!(
        "{name} is not installed: run scripts/test, which installs it (or set TFE_OIDC_ALLOW_SKIP=1 on a developer machine)"
    );
}

/// Whether the Python JOSE libraries are importable (same skip rules as `require_tool`).
pub fn require_python_jose() -> bool {
    if require_tool("python3").is_none() {
        return false;
    }
    let ok = Command::new("python3")
        .args(["-c", "import jwt, joserfc"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !in_ci && std::env::var("TFE_OIDC_ALLOW_SKIP").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: PyJWT/joserfc are not installed (TFE_OIDC_ALLOW_SKIP=1)");
        return false;
    }
    panic!("PyJWT and joserfc are not installed: run scripts/test, which installs them");
}

/// Verifies `tokens` with PyJWT and joserfc against the JWKS at `jwks_url`; one result per token.
pub fn verify_with_python(
    jwks_url: &str,
    issuer: &str,
    audience: &str,
    ca: Option<&Path>,
    tokens: &[String],
) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jose/verify.py");
    let mut command = Command::new("python3");
    command.arg(script).args([
        "--jwks-url",
        jwks_url,
        "--issuer",
        issuer,
        "--audience",
        audience,
    ]);
    if let Some(ca) = ca {
        command.arg("--ca").arg(ca);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for token in tokens {
            writeln!(stdin, "{token}").unwrap();
        }
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        results.len(),
        tokens.len(),
        "verify.py answered {} of {} tokens; stderr: {}",
        results.len(),
        tokens.len(),
        String::from_utf8_lossy(&output.stderr)
    );
    results
}

/// The `tfe-oidc` binary cargo built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tfe-oidc"))
}

// ---------------------------------------------------------------------------------------------
// Private network and deployment: `tfe-oidc serve` as a process (also inside a network
// namespace), `tfe-oidc validate` as a process, the deploy/ TLS recipe, and a tiny issuer that
// serves crafted documents for the failures the real server cannot be made to produce.
// ---------------------------------------------------------------------------------------------

/// `deploy/` in this checkout.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Runs `deploy/tls/make-certs.sh` into `out` for `san` (e.g. `IP:10.231.7.10`); panics with its
/// output unless it succeeds. `None` when openssl is missing and skipping is allowed.
pub fn make_certs(out: &Path, san: &str) -> Option<()> {
    make_named_cert(out, san, "server")
}

/// `make_certs` for the certificate `<name>.pem` (`NAME=<name> make-certs.sh`), under the CA in
/// `out` (made when missing).
pub fn make_named_cert(out: &Path, san: &str, name: &str) -> Option<()> {
    require_tool("openssl")?;
    let output = Command::new("bash")
        .arg(deploy_dir().join("tls/make-certs.sh"))
        .env("OUT", out)
        .env("SAN", san)
        .env("NAME", name)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "make-certs.sh failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(())
}

/// A long-running child (`tfe-oidc serve`, `bao server`), killed on drop; its output goes to
/// `log`, printed when the test panics.
pub struct Process {
    pub label: &'static str,
    child: std::process::Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(label: &'static str, mut command: Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Process { label, child, log }
    }

    /// Polls `ready` every 50 ms for up to 30 s; panics with the log if it never holds or the
    /// process exits.
    pub fn wait_until(&mut self, mut ready: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ready() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}: {}", self.label, self.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} not ready within 30s: {}",
                self.label,
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.label, self.log_text());
        }
    }
}

/// What `tfe-oidc validate` printed and its exit status.
#[derive(Debug)]
pub struct Validated {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Validated {
    /// The JSON report (`--format json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not a JSON report ({e}): {self:?}"))
    }

    /// The check named `name` in the JSON report.
    pub fn check(&self, name: &str) -> Value {
        self.json()["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no check {name}: {}", self.stdout))
    }
}

/// Runs `command` (a `tfe-oidc validate …`), feeding `stdin`, off the async runtime's threads.
pub async fn run_validate(mut command: Command, stdin: Option<String>) -> Validated {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TFE_OIDC_")) {
            command.env_remove(key);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let output = child.wait_with_output().unwrap();
        Validated {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// `tfe-oidc validate <args>` on this machine.
pub async fn validate(args: &[&str], stdin: Option<String>) -> Validated {
    let mut command = Command::new(binary());
    command.arg("validate").args(args);
    run_validate(command, stdin).await
}

/// An issuer that serves fixed documents, for the failures the real server cannot be made to
/// produce (a short key, a kid that is not a thumbprint, a skewed `Date`, an expired
/// certificate). HTTP/1.1, one request per connection; stopped on drop.
pub struct FakeIssuer {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// What a `FakeIssuer` answers.
#[derive(Clone, Default)]
pub struct FakeDocuments {
    /// `(path, JSON body)`; other paths answer 404.
    pub routes: Vec<(String, String)>,
    /// Seconds added to the current time in the `Date` header (negative: behind).
    pub clock_offset: i64,
    /// Serve TLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl FakeIssuer {
    /// Binds a loopback port, then serves what `documents` makes for that address.
    pub async fn start(
        documents: impl FnOnce(std::net::SocketAddr) -> FakeDocuments,
    ) -> FakeIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let documents = Arc::new(documents(addr));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(fake_connection(stream, documents.clone()));
            }
        });
        FakeIssuer { addr, task }
    }
}

impl Drop for FakeIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_connection(stream: tokio::net::TcpStream, documents: Arc<FakeDocuments>) {
    match &documents.tls {
        None => fake_exchange(stream, &documents).await,
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            if let Ok(tls) = acceptor.accept(stream).await {
                fake_exchange(tls, &documents).await;
            }
        }
    }
}

async fn fake_exchange<S>(mut stream: S, documents: &FakeDocuments)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let found = documents.routes.iter().find(|(p, _)| p == path);
    let (status, body) = match found {
        Some((_, body)) => ("200 OK", body.as_str()),
        None => ("404 Not Found", "{}"),
    };
    let offset = std::time::Duration::from_secs(documents.clock_offset.unsigned_abs());
    let now = std::time::SystemTime::now();
    let date = match documents.clock_offset >= 0 {
        true => now + offset,
        false => now - offset,
    };
    let date = httpdate::fmt_http_date(date);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nDate: {date}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The credential exchange against OpenBao (tests/exchange.rs, tests/run.rs): a server that may
// call it, the documented wiring script, and stand-in AWS, GCP and Azure engines (KV v1 mounts
// at the real engines' paths, holding answers shaped like theirs).
// ---------------------------------------------------------------------------------------------

use base64::Engine as _;

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn random(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// What the stand-in engines hold; every value is fresh, so the log scan can look for it.
pub struct Secrets {
    pub iam_secret: String,
    pub sts_secret: String,
    pub session_token: String,
    pub gcp_token: String,
    pub gcp_private_key: String,
    pub azure_secret: String,
}

impl Secrets {
    pub fn new() -> Secrets {
        Secrets {
            iam_secret: random("iam-secret-"),
            sts_secret: random("sts-secret-"),
            session_token: random("session-"),
            gcp_token: random("ya29."),
            gcp_private_key: random("gcp-key-"),
            azure_secret: random("azure-secret-"),
        }
    }

    pub fn all(&self) -> Vec<&str> {
        vec![
            &self.iam_secret,
            &self.sts_secret,
            &self.session_token,
            &self.gcp_token,
            &self.gcp_private_key,
            &self.azure_secret,
        ]
    }
}

pub async fn start_server(allowed: &[&str], audit: &std::path::Path, timeout: &str) -> TestServer {
    let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    TestServer::start(Options {
        tls: true,
        extra_toml: format!(
            "[exchange]\nallowed_vault_addrs = [{}]\nvault_timeout = \"{timeout}\"\n[audit]\npath = {audit:?}\n",
            allowed.join(", ")
        ),
        ..Options::default()
    })
    .await
}

/// `configure.sh` for acme/<workspace> in `phase` (role `tfe-acme-<workspace>[-<phase>]`, policy
/// of the same name).
pub fn wire(
    bao: &bao::Bao,
    server: &TestServer,
    policy: &str,
    workspace: &str,
    phase: &str,
    extra: &[(&str, &str)],
) {
    let ca = server.pki.as_ref().unwrap().ca.to_str().unwrap().to_owned();
    let role = match phase {
        "*" => format!("tfe-acme-{workspace}"),
        _ => format!("tfe-acme-{workspace}-{phase}"),
    };
    let mut env = vec![
        ("ISSUER", server.issuer()),
        ("CA_FILE", ca.as_str()),
        ("ORG", "acme"),
        ("WORKSPACE", workspace),
        ("PHASE", phase),
        ("POLICY", role.as_str()),
        ("POLICY_FILE", policy),
    ];
    env.extend_from_slice(extra);
    tokio::task::block_in_place(|| bao.configure(&env));
}

/// KV v1 mounts at the engines' paths, holding answers shaped like theirs.
pub async fn mount_engines(bao: &bao::Bao, s: &Secrets, namespace: Option<&str>) {
    let key_file = json!({"type": "service_account", "private_key": s.gcp_private_key}).to_string();
    let writes = [
        (
            "aws/creds/deploy",
            json!({"access_key": "AKIAIAMUSER", "secret_key": s.iam_secret, "security_token": null}),
        ),
        (
            "aws/sts/deploy",
            json!({"access_key": "ASIASTS", "secret_key": s.sts_secret, "security_token": s.session_token, "session_token": s.session_token, "arn": "arn:aws:sts::123456789012:assumed-role/deploy/vault"}),
        ),
        (
            "gcp/roleset/viewer/token",
            json!({"token": s.gcp_token, "expires_at_seconds": 1764115230u64, "token_ttl": 3599}),
        ),
        (
            "gcp/static-account/deployer/key",
            json!({"private_key_data": base64::engine::general_purpose::STANDARD.encode(&key_file), "key_algorithm": "KEY_ALG_RSA_2048", "key_type": "TYPE_GOOGLE_CREDENTIALS_FILE"}),
        ),
        (
            "azure/creds/contributor",
            json!({"client_id": "6f1c2d3e-0000-4000-8000-000000000001", "client_secret": s.azure_secret}),
        ),
        (
            "azure/creds/denied",
            json!({"client_id": "6f1c2d3e-0000-4000-8000-000000000002", "client_secret": s.azure_secret}),
        ),
    ];
    let prefix = namespace.map(|n| format!("{n}/")).unwrap_or_default();
    for mount in ["aws", "gcp", "azure"] {
        bao.root_write(
            &format!("{prefix}sys/mounts/{mount}"),
            json!({"type": "kv", "options": {"version": "1"}}),
        )
        .await;
    }
    for (path, data) in writes {
        bao.root_write(&format!("{prefix}{path}"), data).await;
    }
}

/// `FileStore::open` for a test that reopens a store it has just closed. Other tests in this
/// binary spawn processes all the time, and between fork and exec a child still holds a copy of
/// every descriptor (close-on-exec closes them only at exec), the store's locked one included:
/// for that instant the lock looks held. A real server never reopens its store while forking.
pub fn reopen_store(dir: &Path) -> tfe_oidc::keys::store::FileStore {
    use tfe_oidc::keys::store::{FileStore, StoreError};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match FileStore::open(dir, tfe_oidc::config::RsaBits::Rsa2048) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap_or_else(|e| panic!("the key store opens: {e}")),
        }
    }
}
