//! A real OpenBao per test: `bao server -dev` on a free loopback port, with a private HOME and
//! working directory, stopped (killed) when the guard drops. Plus the few Vault API calls the
//! tests make (login, reads with a client token, root writes) and the documented wiring script,
//! `deploy/vault/configure.sh`, run with `bao` as the CLI.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::{init_crypto, require_tool};

/// The audience TFE uses for Vault (`TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE`'s default).
pub const VAULT_AUDIENCE: &str = "vault.workload.identity";

/// What OpenBao 2.7.2 answers, word for word (reference/openbao-jwt-auth-findings.md).
pub mod reasons {
    pub const SUB_MISMATCH: &str =
        "error validating claims: claim \"sub\" does not match any associated bound claim values";
    pub const AUDIENCE: &str = "error validating token: invalid audience (aud) claim: audience claim does not match any expected audience";
    pub const EXPIRED: &str =
        "error validating token: invalid expiration time (exp) claim: token is expired";
    pub const SIGNATURE: &str = "error validating token: error verifying token signature: failed to verify id token signature";
}

/// A running `bao server -dev`; killed on drop.
pub struct Bao {
    /// `http://127.0.0.1:<port>`
    pub addr: String,
    /// The `bao` executable found on PATH.
    pub bin: PathBuf,
    /// Private HOME and working directory (holds `bao.log`).
    pub home: TempDir,
    /// With `start_tls`: the CA of the dev server's certificate (`<home>/vault-ca.pem`).
    pub ca_pem: Option<String>,
    child: Child,
    http: reqwest::Client,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.home.path().join("bao.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of the OpenBao log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A port that is free, with port+1 free too (the dev server's cluster listener).
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl Bao {
    /// Starts a dev server and waits until `GET /v1/sys/health` answers 200. `None` when `bao`
    /// is missing and skipping is allowed (see `require_tool`); a missing `bao` fails in CI.
    pub async fn start() -> Option<Bao> {
        Bao::start_with(false).await
    }

    /// Starts a dev server with `-dev-tls` (HTTPS, a CA it makes in its HOME); `ca_pem` holds it.
    pub async fn start_tls() -> Option<Bao> {
        Bao::start_with(true).await
    }

    async fn start_with(tls: bool) -> Option<Bao> {
        init_crypto();
        let bin = require_tool("bao")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut failures = Vec::new();
        for _ in 0..4 {
            let home = tempfile::tempdir().unwrap();
            let port = free_port_pair();
            let log = std::fs::File::create(home.path().join("bao.log")).unwrap();
            let mut args = vec![
                "server".to_owned(),
                "-dev".to_owned(),
                "-dev-root-token-id=root".to_owned(),
                "-dev-no-store-token".to_owned(),
                format!("-dev-listen-address=127.0.0.1:{port}"),
            ];
            if tls {
                args.push("-dev-tls".to_owned());
                args.push(format!("-dev-tls-cert-dir={}", home.path().display()));
            }
            let child = Command::new(&bin)
                .args(&args)
                .env("HOME", home.path())
                .current_dir(home.path())
                .env_remove("BAO_ADDR")
                .env_remove("VAULT_ADDR")
                .env_remove("BAO_TOKEN")
                .env_remove("VAULT_TOKEN")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let scheme = if tls { "https" } else { "http" };
            let mut bao = Bao {
                addr: format!("{scheme}://127.0.0.1:{port}"),
                bin: bin.clone(),
                home,
                ca_pem: None,
                child,
                http: http.clone(),
            };
            if tls && let Err(e) = bao.trust_dev_ca().await {
                failures.push(e);
                continue;
            }
            match bao.wait_ready().await {
                Ok(()) => return Some(bao),
                Err(e) => failures.push(e),
            }
        }
        panic!("OpenBao did not start: {failures:#?}");
    }

    /// Waits for the dev server's CA file and makes `http` trust it.
    async fn trust_dev_ca(&mut self) -> Result<(), String> {
        let path = self.home.path().join("vault-ca.pem");
        let deadline = Instant::now() + Duration::from_secs(30);
        let pem = loop {
            match std::fs::read_to_string(&path) {
                Ok(pem) if pem.contains("END CERTIFICATE") => break pem,
                _ if Instant::now() > deadline => {
                    return Err(format!("{} did not appear within 30s", path.display()));
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let cert = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        self.http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .add_root_certificate(cert)
            .build()
            .unwrap();
        self.ca_pem = Some(pem);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/v1/sys/health", self.addr);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.home.path().join("bao.log")).unwrap_or_default();
                return Err(format!("bao exited with {status}: {log}"));
            }
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().as_u16() == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{url} did not answer 200 within 30s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A Vault API call: status and JSON body (`null` when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr));
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The `data` of transit key `tfe-oidc` (the one tfe-oidc's transit store uses by default), read
    /// with the root token.
    pub async fn transit_key(&self) -> Value {
        let (status, key) = self
            .call(
                reqwest::Method::GET,
                "transit/keys/tfe-oidc",
                Some("root"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{key}");
        key["data"].clone()
    }

    /// Freezes the server (SIGSTOP): it accepts connections but answers nothing, as a Vault
    /// behind a broken network does. `resume` undoes it.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen server run again (SIGCONT), with all its state.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// A dev server with transit mounted and a token holding only
    /// `deploy/vault/transit-policy.hcl`, written to `<dir>/vault-token` (the transit key store's
    /// `keys.vault.token_file`). The token is periodic (30 s): it dies unless the issuer renews it.
    pub async fn start_with_transit(dir: &Path) -> Option<(Bao, PathBuf)> {
        let bao = Bao::start().await?;
        bao.root_write("sys/mounts/transit", json!({ "type": "transit" }))
            .await;
        let policy = std::fs::read_to_string(deploy_vault().join("transit-policy.hcl")).unwrap();
        bao.root_write("sys/policy/tfe-oidc-keys", json!({ "policy": policy }))
            .await;
        let answer = bao
            .root_write(
                "auth/token/create",
                json!({ "policies": ["tfe-oidc-keys"], "no_default_policy": true, "no_parent": true, "period": "30s" }),
            )
            .await;
        let path = dir.join("vault-token");
        std::fs::write(&path, answer["auth"]["client_token"].as_str().unwrap()).unwrap();
        Some((bao, path))
    }

    /// A write with the root token that must succeed.
    pub async fn root_write(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self
            .call(reqwest::Method::PUT, path, Some("root"), Some(&body))
            .await;
        assert!(
            (200..300).contains(&status),
            "PUT /v1/{path} answered {status}: {answer}"
        );
        answer
    }

    /// Stores a kv-v2 secret at `secret/<path>` (the dev server mounts kv-v2 at `secret/`).
    pub async fn kv_put(&self, path: &str, data: Value) {
        self.root_write(&format!("secret/data/{path}"), json!({ "data": data }))
            .await;
    }

    /// `POST /v1/auth/<mount>/login {"role", "jwt"}`: the `auth` object on 200, or the joined
    /// `errors` on 400. Any other status fails the test.
    pub async fn login_at(&self, mount: &str, role: &str, jwt: &str) -> Result<Value, String> {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("auth/{mount}/login"),
                None,
                Some(&json!({ "role": role, "jwt": jwt })),
            )
            .await;
        match status {
            200 => Ok(body["auth"].clone()),
            400 => Err(body["errors"]
                .as_array()
                .map(|errors| {
                    errors
                        .iter()
                        .map(|e| e.as_str().unwrap_or_default().to_owned())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_else(|| body.to_string())),
            _ => panic!("login answered {status}: {body}"),
        }
    }

    /// A login at the `jwt` mount.
    pub async fn login(&self, role: &str, jwt: &str) -> Result<Value, String> {
        self.login_at("jwt", role, jwt).await
    }

    /// `GET /v1/<path>` with a client token: the status.
    pub async fn read_status(&self, token: &str, path: &str) -> u16 {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
            .0
    }

    /// The `bao` CLI, pointed at this server with the root token, in the private HOME.
    pub fn cli(&self) -> Command {
        let mut command = Command::new(&self.bin);
        self.cli_env(&mut command);
        command
    }

    fn cli_env(&self, command: &mut Command) {
        command
            .env("HOME", self.home.path())
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", "root")
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", "root");
        if self.ca_pem.is_some() {
            let ca = self.home.path().join("vault-ca.pem");
            command.env("VAULT_CACERT", &ca).env("BAO_CACERT", &ca);
        }
    }

    /// Runs `deploy/vault/configure.sh` with `bao` as the CLI and `env` as its parameters; panics
    /// with the script's output unless it exits 0. Returns its stdout.
    pub fn configure(&self, env: &[(&str, &str)]) -> String {
        let script = deploy_vault().join("configure.sh");
        let mut command = Command::new("bash");
        command.arg(&script).env("VAULT_CLI", &self.bin);
        self.cli_env(&mut command);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        assert!(
            output.status.success(),
            "configure.sh failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            output.status
        );
        stdout
    }
}

/// `deploy/vault/` in this checkout.
pub fn deploy_vault() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vault")
}
