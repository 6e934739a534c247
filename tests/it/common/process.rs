//! `tfe-oidc` as operators run it: the built binary as a child process with a clean environment,
//! its own temporary directory and loopback ports, killed however the test ends.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::raw::http;
use super::{ApiTokens, RUN_FLAGS, binary, free_port, write_tokens_file};

/// The binary with an empty environment (but `PATH`), so that no `TFE_OIDC_*` variable of the
/// developer's shell leaks in, running in `cwd`.
pub fn tfe_oidc(cwd: &Path) -> Command {
    let mut command = Command::new(binary());
    command.env_clear().current_dir(cwd);
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
}

pub fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A configuration on free loopback ports with its tokens file, in its own directory.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub keys: PathBuf,
    pub discovery: SocketAddr,
    pub api: SocketAddr,
    pub tokens: ApiTokens,
}

impl Setup {
    /// `extra_toml` is appended to the file: whole sections, such as `[audit]`.
    pub fn new(extra_toml: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let tokens = write_tokens_file(dir.path());
        Setup::with_tokens(dir, tokens, "", extra_toml)
    }

    /// `discovery_toml` is added to the `[discovery]` section, `extra_toml` appended to the file.
    pub fn with_tokens(
        dir: tempfile::TempDir,
        tokens: ApiTokens,
        discovery_toml: &str,
        extra_toml: &str,
    ) -> Setup {
        let keys = dir.path().join("keys");
        let (discovery, api) = ports();
        let config = dir.path().join("tfe-oidc.toml");
        std::fs::write(
            &config,
            format!(
                "issuer = \"http://{discovery}\"\n\
                 [discovery]\nlisten = \"{discovery}\"\n{discovery_toml}\n\
                 [api]\nlisten = \"{api}\"\ntokens_file = {:?}\n\
                 [keys]\ndir = {keys:?}\n{extra_toml}\n",
                dir.path().join("api-tokens"),
            ),
        )
        .unwrap();
        Setup {
            dir,
            config,
            keys,
            discovery,
            api,
            tokens,
        }
    }

    /// `tfe-oidc <args> --config <file>`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = tfe_oidc(self.dir.path());
        command.args(args).arg("--config").arg(&self.config);
        command
    }

    pub fn serve(&self, extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = tfe_oidc(self.dir.path());
        command
            .args(extra_args)
            .arg("serve")
            .arg("--config")
            .arg(&self.config);
        for (k, v) in env {
            command.env(k, v);
        }
        Server::spawn(command, self.dir.path(), self.api)
    }

    pub fn issue_args(&self, phase: &str) -> Command {
        let mut args = vec!["token", "issue"];
        args.extend_from_slice(RUN_FLAGS);
        args.extend(["--phase", phase]);
        self.command(&args)
    }
}

/// Two distinct free loopback addresses.
pub fn ports() -> (SocketAddr, SocketAddr) {
    loop {
        let (a, b) = (free_port(), free_port());
        if a != b {
            return (
                format!("127.0.0.1:{a}").parse().unwrap(),
                format!("127.0.0.1:{b}").parse().unwrap(),
            );
        }
    }
}

/// A `serve` child process, killed when dropped; its stdout and stderr go to files.
pub struct Server {
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    api: SocketAddr,
}

static SERVER_COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Server {
    pub fn spawn(mut command: Command, dir: &Path, api: SocketAddr) -> Server {
        let n = SERVER_COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stdout = dir.join(format!("serve-{n}.stdout"));
        let stderr = dir.join(format!("serve-{n}.stderr"));
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Server {
            child,
            stdout,
            stderr,
            api,
        }
    }

    /// Sends `signal` (a name such as `HUP`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until the server logs that both listeners are bound (`Ok`), or exits (`Err`).
    pub fn wait_serving(&mut self) -> Result<(), (ExitStatus, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err((status, self.stderr()));
            }
            if self.stderr().contains("tfe-oidc serving") {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "serve did not start within 30s:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for serving and checks readiness over HTTP.
    pub fn ready(mut self) -> Server {
        if let Err((status, stderr)) = self.wait_serving() {
            panic!("serve exited with {status}:\n{stderr}");
        }
        let (status, _, body) = http(self.api, "GET", "/readyz", &[], b"");
        assert_eq!(status, 200, "readyz: {body}");
        self
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM, then asserts a clean exit within a few seconds.
    pub fn stop(mut self) -> (String, String) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(10));
        let stderr = self.stderr();
        assert!(
            status.is_some_and(|s| s.success()),
            "serve did not exit 0 within 10s of SIGTERM ({status:?}):\n{stderr}"
        );
        (self.stdout(), stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
