//! `tfe-oidc run -- COMMAND` against a real OpenBao 2.7.2 wired by `deploy/vault/configure.sh`,
//! with the stand-in engines of tests/exchange.rs (KV v1 mounts at the AWS, GCP and Azure
//! engines' paths). The service runs in this process; `run` is the built binary, and COMMAND is
//! `bao` or a small Python probe that records what it was given in a report file (which holds
//! secrets, so it is written to the test's own directory, never to stdout).
//!
//! Each `run` gets its own `TMPDIR`, so "the directory is gone" is "`TMPDIR` is empty".

use crate::common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tempfile::TempDir;

use common::bao::{Bao, deploy_vault};
use common::{RUN_FLAGS, Secrets, TestServer, binary, mount_engines, random, start_server, wire};

/// The probe COMMAND: `probe.py REPORT EXIT_CODE SLEEP_BEFORE SLEEP_AFTER`. It sleeps, then
/// records the environment, the credential files and their modes, a `lookup-self` with every
/// Vault token file, and the AWS profiles botocore loads from the shared-credentials file (with
/// the AWS environment variables removed, so that the file is what is read), then sleeps again
/// and exits with EXIT_CODE.
const PROBE: &str = r#"
import json, os, stat, sys, time, urllib.request, urllib.error
report, code, before, after = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
time.sleep(before)
def lookup(addr, token):
    req = urllib.request.Request(addr + "/v1/auth/token/lookup-self", headers={"X-Vault-Token": token})
    try:
        return urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        return e.code
env = {k: v for k, v in os.environ.items() if k.startswith(("TF_VAR_", "TFC_", "VAULT_", "AWS_", "ARM_", "GOOGLE_"))}
out = {"env": env, "tokens": {}, "modes": {}, "aws": {}}
vault = json.loads(env["TF_VAR_tfc_vault_dynamic_credentials"])
entries = dict(vault["aliases"])
if vault["default"]:
    entries["default"] = vault["default"]
for name, entry in entries.items():
    token = open(entry["token_filename"]).read()
    out["tokens"][name] = {"token": token, "status": lookup(entry["address"], token)}
    out["modes"][entry["token_filename"]] = oct(stat.S_IMODE(os.stat(entry["token_filename"]).st_mode))
    out["dir"] = os.path.dirname(entry["token_filename"])
out["modes"]["dir"] = oct(stat.S_IMODE(os.stat(out["dir"]).st_mode))
out["files"] = sorted(os.listdir(out["dir"]))
if "AWS_SHARED_CREDENTIALS_FILE" in env:
    import botocore.session
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        os.environ.pop(k, None)
    aws = json.loads(env["TF_VAR_tfc_vault_backed_aws_dynamic_credentials"])
    profiles = ["default"] + list(aws["aliases"])
    for profile in profiles:
        c = botocore.session.Session(profile=profile).get_credentials()
        out["aws"][profile] = [c.access_key, c.secret_key, c.token, c.method]
    alias_files = {k: v["shared_credentials_file"] for k, v in aws["aliases"].items()}
    out["aws_alias_files"] = alias_files
with open(report + ".tmp", "w") as f:
    json.dump(out, f)
os.rename(report + ".tmp", report)
time.sleep(after)
sys.exit(code)
"#;

/// The run flags of workspace `workspace`, apply phase.
fn run_flags(workspace: &str) -> Vec<String> {
    let mut flags: Vec<String> = RUN_FLAGS.iter().map(|s| s.to_string()).collect();
    let at = flags.iter().position(|f| f == "--workspace").unwrap() + 1;
    flags[at] = workspace.to_owned();
    flags.extend(["--phase".to_owned(), "apply".to_owned()]);
    flags
}

struct Fixture {
    bao: Bao,
    server: TestServer,
    secrets: Secrets,
    files: TempDir,
    /// A secret in KV v2 at secret/tfe/acme/prod/db, which the role's policy may read.
    password: String,
}

async fn fixture() -> Option<Fixture> {
    let bao = Bao::start().await?;
    let files = tempfile::tempdir().unwrap();
    let server = start_server(&[&bao.addr], &files.path().join("audit.jsonl"), "10s").await;
    let policy = deploy_vault().join("policy.hcl");
    let policy = policy.to_str().unwrap();
    wire(&bao, &server, policy, "prod", "*", &[]);
    wire(
        &bao,
        &server,
        policy,
        "renew",
        "*",
        &[("TOKEN_TTL", "3s"), ("POLICY", "tfe-acme-prod")],
    );
    let secrets = Secrets::new();
    mount_engines(&bao, &secrets, None).await;
    let password = random("db-password-");
    bao.kv_put("tfe/acme/prod/db", json!({"password": password}))
        .await;
    std::fs::write(files.path().join("api-token"), &server.tokens.all).unwrap();
    std::fs::write(files.path().join("probe.py"), PROBE).unwrap();
    Some(Fixture {
        bao,
        server,
        secrets,
        files,
        password,
    })
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.files.path().join(name)
    }

    /// `tfe-oidc run` for `workspace` with `vars` as its environment (and a private TMPDIR),
    /// running `command`.
    fn command(
        &self,
        workspace: &str,
        vars: &[(&str, &str)],
        command: &[&str],
    ) -> (Command, TempDir) {
        self.command_at(&self.server.api_url(""), workspace, vars, command)
    }

    fn command_at(
        &self,
        api: &str,
        workspace: &str,
        vars: &[(&str, &str)],
        command: &[&str],
    ) -> (Command, TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let mut run = Command::new(binary());
        run.arg("run")
            .arg("--api")
            .arg(api)
            .arg("--api-token-file")
            .arg(self.path("api-token"))
            .args(run_flags(workspace))
            .arg("--")
            .args(command)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("HOME", self.bao.home.path())
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            run.env(k, v);
        }
        (run, tmp)
    }

    fn probe(&self, report: &str, code: u8, before: u32, after: u32) -> Vec<String> {
        vec![
            "python3".into(),
            self.path("probe.py").to_str().unwrap().into(),
            self.path(report).to_str().unwrap().into(),
            code.to_string(),
            before.to_string(),
            after.to_string(),
        ]
    }

    fn report(&self, name: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.path(name)).unwrap()).unwrap()
    }

    /// No secret of this fixture, and none of `more`, in `output`'s stdout or stderr.
    fn assert_quiet(&self, output: &Output, more: &[&str]) {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let mut secrets = self.secrets.all();
        secrets.push(&self.password);
        secrets.push(&self.server.tokens.all);
        secrets.extend_from_slice(more);
        for secret in secrets {
            assert!(!text.contains(secret), "a secret was printed:\n{text}");
        }
    }

    /// After `run` ended: the default Vault token the probe `name` saw is revoked, the private
    /// directory is gone, and no secret reached `run`'s output.
    async fn assert_revoked_and_cleaned(&self, name: &str, output: &Output, tmp: &TempDir) {
        let token = self.report(name)["tokens"]["default"]["token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(self.lookup(&token).await, 403);
        assert_empty(tmp);
        self.assert_quiet(output, &[&token]);
    }

    async fn lookup(&self, token: &str) -> u16 {
        self.bao.read_status(token, "auth/token/lookup-self").await
    }
}

/// Workspace variables as `run`'s environment gets them.
type Vars = Vec<(&'static str, String)>;

fn vault_vars(addr: &str) -> Vars {
    vec![
        ("TFC_VAULT_PROVIDER_AUTH", "true".into()),
        ("TFC_VAULT_ADDR", addr.into()),
        ("TFC_VAULT_RUN_ROLE", "tfe-acme-prod".into()),
    ]
}

fn borrowed<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn run_to_end(mut command: Command) -> Output {
    tokio::task::block_in_place(|| command.output().unwrap())
}

/// Starts `command`, waits (up to 30 s, failing with `never`) until `ready()`, then sends `run`
/// SIGTERM: its output, and how long it took to end after the signal.
async fn sigterm_once_ready(
    command: Command,
    ready: impl Fn() -> bool,
    never: &str,
) -> (Output, Duration) {
    signal_once_ready(command, "TERM", ready, never).await
}

/// `sigterm_once_ready` with any `signal` (a name for `kill -<signal>`).
async fn signal_once_ready(
    mut command: Command,
    signal: &str,
    ready: impl Fn() -> bool,
    never: &str,
) -> (Output, Duration) {
    let child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    let output = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
    (output, started.elapsed())
}

fn assert_empty(tmp: &TempDir) {
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
}

/// The claims of a JWT, undecoded signature.
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// `bao kv get` reads the workspace's secret with nothing but the environment `run` gave it,
/// and the Vault token it used is revoked once the command has exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_kv_get_reads_a_secret_and_the_token_dies_with_the_command() {
    let Some(f) = fixture().await else { return };
    let vars = vault_vars(&f.bao.addr);
    let out = f.path("kv-out");
    let script = format!(
        "bao kv get -field=password secret/tfe/acme/prod/db > {out:?} && printf %s \"$VAULT_TOKEN\" > {out:?}.token"
    );
    let (command, tmp) = f.command("prod", &borrowed(&vars), &["sh", "-c", &script]);
    let output = run_to_end(command);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), f.password);
    let token = std::fs::read_to_string(format!("{}.token", out.display())).unwrap();
    assert!(!token.is_empty());
    assert_eq!(
        f.lookup(&token).await,
        403,
        "revoked when the command ended"
    );
    assert_empty(&tmp);
    f.assert_quiet(&output, &[&token]);
}

/// Every family at once: a tagged Vault configuration under `aliases` with its own working
/// token file, private files, botocore loading both AWS profiles from the shared-credentials
/// file, GCP and Azure entries pointing at files, and a manual workload identity token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_tf_vars_carry_every_configuration() {
    let Some(f) = fixture().await else { return };
    let mut vars = vault_vars(&f.bao.addr);
    vars.extend([
        ("TFC_VAULT_PROVIDER_AUTH_TEAM_B", "true".into()),
        ("TFC_VAULT_ADDR_TEAM_B", f.bao.addr.clone()),
        ("TFC_VAULT_RUN_ROLE_TEAM_B", "tfe-acme-prod".into()),
        ("TFC_VAULT_BACKED_AWS_AUTH", "true".into()),
        ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "iam_user".into()),
        ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "deploy".into()),
        ("TFC_VAULT_BACKED_AWS_AUTH_STS", "true".into()),
        ("TFC_VAULT_BACKED_AWS_AUTH_TYPE_STS", "assumed_role".into()),
        ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE_STS", "deploy".into()),
        ("TFC_VAULT_BACKED_AWS_VAULT_CONFIG_STS", "TEAM_B".into()),
        ("TFC_VAULT_BACKED_GCP_AUTH", "true".into()),
        (
            "TFC_VAULT_BACKED_GCP_AUTH_TYPE",
            "static_account/service_account_key".into(),
        ),
        (
            "TFC_VAULT_BACKED_GCP_RUN_VAULT_STATIC_ACCOUNT",
            "deployer".into(),
        ),
        ("TFC_VAULT_BACKED_AZURE_AUTH", "true".into()),
        (
            "TFC_VAULT_BACKED_AZURE_RUN_VAULT_ROLE",
            "contributor".into(),
        ),
        (
            "TFC_WORKLOAD_IDENTITY_AUDIENCE",
            "aws.workload.identity".into(),
        ),
        (
            "TFC_WORKLOAD_IDENTITY_AUDIENCE_AZ",
            "api://AzureADTokenExchange".into(),
        ),
    ]);
    let probe = f.probe("report", 0, 0, 0);
    let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
    let (command, tmp) = f.command("prod", &borrowed(&vars), &probe);
    let output = run_to_end(command);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let r = f.report("report");

    let tokens = &r["tokens"];
    assert_eq!(tokens["default"]["status"], 200);
    assert_eq!(
        tokens["TEAM_B"]["status"], 200,
        "the alias token file works"
    );
    assert_ne!(tokens["default"]["token"], tokens["TEAM_B"]["token"]);
    let vault: Value = serde_json::from_str(
        r["env"]["TF_VAR_tfc_vault_dynamic_credentials"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(vault["aliases"]["TEAM_B"]["address"], f.bao.addr.as_str());
    assert_eq!(r["env"]["VAULT_ADDR"], f.bao.addr.as_str());
    assert_eq!(r["env"]["VAULT_TOKEN"], tokens["default"]["token"]);
    for (path, mode) in r["modes"].as_object().unwrap() {
        let want = if path == "dir" { "0o700" } else { "0o600" };
        assert_eq!(mode, want, "{path}");
    }

    let s = &f.secrets;
    assert_eq!(
        r["aws"]["default"],
        json!(["AKIAIAMUSER", s.iam_secret, null, "shared-credentials-file"])
    );
    assert_eq!(
        r["aws"]["STS"],
        json!([
            "ASIASTS",
            s.sts_secret,
            s.session_token,
            "shared-credentials-file"
        ])
    );
    let dir = r["dir"].as_str().unwrap();
    assert_eq!(
        r["aws_alias_files"]["STS"],
        format!("{dir}/aws-credentials.STS").as_str()
    );
    let gcp: Value = serde_json::from_str(
        r["env"]["TF_VAR_tfc_vault_backed_gcp_dynamic_credentials"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        gcp["default"]["credentials"],
        format!("{dir}/gcp-credentials.json").as_str()
    );
    let azure: Value = serde_json::from_str(
        r["env"]["TF_VAR_tfc_vault_backed_azure_dynamic_credentials"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        azure["default"],
        json!({"client_id_file_path": format!("{dir}/azure-client-id"), "client_secret_file_path": format!("{dir}/azure-client-secret")})
    );
    assert_eq!(r["env"]["ARM_CLIENT_SECRET"], s.azure_secret.as_str());

    let manual = claims(r["env"]["TFC_WORKLOAD_IDENTITY_TOKEN"].as_str().unwrap());
    assert_eq!(manual["aud"], "aws.workload.identity");
    assert_eq!(manual["terraform_run_phase"], "apply");
    let tagged = claims(r["env"]["TFC_WORKLOAD_IDENTITY_TOKEN_AZ"].as_str().unwrap());
    assert_eq!(tagged["aud"], "api://AzureADTokenExchange");

    for name in ["default", "TEAM_B"] {
        let token = tokens[name]["token"].as_str().unwrap();
        assert_eq!(f.lookup(token).await, 403, "{name} revoked afterwards");
    }
    assert_empty(&tmp);
    let printed_never = [
        tokens["default"]["token"].as_str().unwrap(),
        tokens["TEAM_B"]["token"].as_str().unwrap(),
        r["env"]["TFC_WORKLOAD_IDENTITY_TOKEN"].as_str().unwrap(),
    ];
    f.assert_quiet(&output, &printed_never);
}

/// A command that fails still has its credentials revoked and its files deleted, and `run`
/// exits with the command's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_command_still_revokes_and_cleans_up() {
    let Some(f) = fixture().await else { return };
    let vars = vault_vars(&f.bao.addr);
    let probe = f.probe("failing", 3, 0, 0);
    let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
    let (command, tmp) = f.command("prod", &borrowed(&vars), &probe);
    let output = run_to_end(command);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    f.assert_revoked_and_cleaned("failing", &output, &tmp).await;
}

/// SIGTERM to `run` mid-command is forwarded; the command dies of it, the credentials are
/// revoked, the files deleted, and `run` exits 128 + 15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_is_forwarded_then_revokes_and_cleans_up() {
    let Some(f) = fixture().await else { return };
    let vars = vault_vars(&f.bao.addr);
    let probe = f.probe("term", 0, 0, 60);
    let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
    let (command, tmp) = f.command("prod", &borrowed(&vars), &probe);
    let report = f.path("term");
    let (output, took) = sigterm_once_ready(
        command,
        || report.exists(),
        "the probe never wrote its report",
    )
    .await;
    assert!(
        took < Duration::from_secs(30),
        "the probe's sleep was cut short"
    );
    assert_eq!(output.status.code(), Some(143), "{output:?}");
    f.assert_revoked_and_cleaned("term", &output, &tmp).await;
}

/// A token whose role gives it 3 s is renewed while an 8 s command runs: the command's
/// `lookup-self` at 8 s still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_ttl_token_is_renewed_while_the_command_runs() {
    let Some(f) = fixture().await else { return };
    let vars = vec![
        ("TFC_VAULT_PROVIDER_AUTH", "true".to_owned()),
        ("TFC_VAULT_ADDR", f.bao.addr.clone()),
        ("TFC_VAULT_RUN_ROLE", "tfe-acme-renew".to_owned()),
    ];
    let probe = f.probe("renew", 0, 8, 0);
    let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
    let (command, tmp) = f.command("renew", &borrowed(&vars), &probe);
    let output = run_to_end(command);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report = f.report("renew");
    assert_eq!(
        report["tokens"]["default"]["status"], 200,
        "renewed past its 3 s TTL"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("vault token renewed"),
        "{output:?}"
    );
    assert_empty(&tmp);
}

/// A bad variable stops `run` with 64 and the API's message naming it; a refused manual
/// audience names its variable; an unreachable API is 69. COMMAND never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_the_command_never_run_it() {
    let Some(f) = fixture().await else { return };
    let marker = f.path("ran");
    let touch = format!("touch {marker:?}");
    let cases: Vec<(Vars, u8, &str)> = vec![
        (
            [
                vault_vars(&f.bao.addr),
                vec![("TFC_VAULT_CLIENT_TIMEOUT", "soon".into())],
            ]
            .concat(),
            64,
            "TFC_VAULT_CLIENT_TIMEOUT",
        ),
        (
            [
                vault_vars(&f.bao.addr),
                vec![("TFC_WORKLOAD_IDENTITY_AUDIENCE_X", "not.allowed".into())],
            ]
            .concat(),
            64,
            "TFC_WORKLOAD_IDENTITY_AUDIENCE_X",
        ),
        (
            vec![
                ("TFC_VAULT_PROVIDER_AUTH", "true".into()),
                ("TFC_VAULT_ADDR", "http://127.0.0.1:9".into()),
                ("TFC_VAULT_RUN_ROLE", "r".into()),
            ],
            77,
            "not an allowed Vault address",
        ),
    ];
    for (vars, code, needle) in cases {
        let (command, tmp) = f.command("prod", &borrowed(&vars), &["sh", "-c", &touch]);
        let output = run_to_end(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code.into()), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!marker.exists(), "COMMAND ran despite: {stderr}");
        assert_empty(&tmp);
        f.assert_quiet(&output, &[]);
    }
    let vars = vault_vars(&f.bao.addr);
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let (command, _tmp) = f.command_at(&closed, "prod", &borrowed(&vars), &["sh", "-c", &touch]);
    let output = run_to_end(command);
    assert_eq!(output.status.code(), Some(69), "{output:?}");
    assert!(!marker.exists());
}

/// A SIGTERM while `run` waits for `not_before` (an AWS `SLEEP_SECONDS`) never starts COMMAND:
/// the credentials are revoked, the files deleted, and `run` exits 143 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_not_before_revokes_without_running() {
    let Some(f) = fixture().await else { return };
    let mut vars = vault_vars(&f.bao.addr);
    vars.extend([
        ("TFC_VAULT_BACKED_AWS_AUTH", "true".into()),
        ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "iam_user".into()),
        ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "deploy".into()),
        ("TFC_VAULT_BACKED_AWS_SLEEP_SECONDS", "60".into()),
    ]);
    let marker = f.path("ran");
    let touch = format!("touch {marker:?}");
    let (command, tmp) = f.command("prod", &borrowed(&vars), &["sh", "-c", &touch]);
    let wrote = || std::fs::read_dir(tmp.path()).unwrap().next().is_some();
    let (output, took) = sigterm_once_ready(command, wrote, "run never wrote its files").await;
    assert!(
        took < Duration::from_secs(20),
        "not_before was still waited for"
    );
    assert_eq!(output.status.code(), Some(143), "{output:?}");
    assert!(!marker.exists(), "COMMAND ran");
    assert_empty(&tmp);
    let metrics = reqwest::get(f.server.api_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tfe_oidc_vault_requests_total{step=\"revoke\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    f.assert_quiet(&output, &[]);
}

/// A COMMAND that cannot be found is 127, after the credentials were revoked and deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_command_is_127_and_still_cleans_up() {
    let Some(f) = fixture().await else { return };
    let vars = vault_vars(&f.bao.addr);
    let (command, tmp) = f.command("prod", &borrowed(&vars), &["no-such-command-tfe-oidc"]);
    let output = run_to_end(command);
    assert_eq!(output.status.code(), Some(127), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot run no-such-command-tfe-oidc"),
        "{stderr}"
    );
    assert_empty(&tmp);
    f.assert_quiet(&output, &[]);
}

/// The COMMAND of the hand-over tests: `where.py REPORT` records everything of `run` (its parent)
/// and of itself that a COMMAND could search for the caller's credential: its own environment
/// and standard input, the parent's command line and environment, and each of the parent's
/// open descriptors (where it points, and the content of those that are regular files).
const WHERE: &str = r#"
import json, os, stat, sys
ppid = os.getppid()
def read(path):
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20).decode("utf-8", "replace")
    except OSError as e:
        return "unreadable: %s" % e
fds = {}
for n in sorted(os.listdir("/proc/%d/fd" % ppid)):
    path = "/proc/%d/fd/%s" % (ppid, n)
    try:
        link = os.readlink(path)
    except OSError as e:
        link = "unreadable: %s" % e
    content = read(path) if os.path.isfile(path) and stat.S_ISREG(os.stat(path).st_mode) else None
    fds[n] = {"link": link, "content": content}
out = {"env": dict(os.environ), "stdin": os.readlink("/proc/self/fd/0"),
       "parent_cmdline": read("/proc/%d/cmdline" % ppid), "parent_environ": read("/proc/%d/environ" % ppid),
       "parent_fds": fds}
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
"#;

/// Issue 20's hand-over: the credential given as `--api-token-file /dev/fd/3` (with `3<file`)
/// and as `-` (standard input, a pipe) is read and its descriptor closed before COMMAND starts.
/// COMMAND then finds it neither in its environment (which holds no `TFE_OIDC_RUN_*` either,
/// although `run` read its flags from them) nor in `run`'s command line, environment or open
/// descriptors, and its own standard input is `/dev/null`, not the consumed pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_handed_over_by_descriptor_is_nowhere_command_can_find_it() {
    let Some(f) = fixture().await else { return };
    std::fs::write(f.path("where.py"), WHERE).unwrap();
    let vars = vault_vars(&f.bao.addr);
    let token_file = f.path("api-token");
    for (case, source) in [("fd3", "/dev/fd/3"), ("stdin", "-")] {
        let report = f.path(&format!("where-{case}"));
        let probe = [
            "python3".into(),
            f.path("where.py").into_os_string(),
            report.clone().into_os_string(),
        ];
        let tmp = tempfile::tempdir().unwrap();
        let mut command = match case {
            "fd3" => {
                let mut sh = Command::new("sh");
                let script = "file=$1; shift; exec \"$@\" 3<\"$file\"";
                sh.args(["-c", script, "sh"])
                    .arg(&token_file)
                    .arg(binary())
                    .stdin(Stdio::null());
                sh
            }
            _ => {
                let mut direct = Command::new(binary());
                direct.stdin(Stdio::piped());
                direct
            }
        };
        // The API and the credential's location come from TFE_OIDC_RUN_*, not from flags.
        command
            .arg("run")
            .args(run_flags("prod"))
            .arg("--")
            .args(probe)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("HOME", f.bao.home.path())
            .env("TMPDIR", tmp.path())
            .env("TFE_OIDC_RUN_API", f.server.api_url(""))
            .env("TFE_OIDC_RUN_API_TOKEN_FILE", source)
            .envs(borrowed(&vars))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            stdin.write_all(f.server.tokens.all.as_bytes()).unwrap();
        }
        let output = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
        assert_eq!(output.status.code(), Some(0), "{case}: {output:?}");
        let text = std::fs::read_to_string(&report).unwrap();
        let seen: Value = serde_json::from_str(&text).unwrap();
        assert!(
            !text.contains(&f.server.tokens.all),
            "{case}: COMMAND found the credential: {seen:#}"
        );
        let leftovers: Vec<&String> = seen["env"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("TFE_OIDC_RUN_"))
            .collect();
        assert!(leftovers.is_empty(), "{case}: {leftovers:?}");
        let links: Vec<&str> = seen["parent_fds"]
            .as_object()
            .unwrap()
            .values()
            .map(|fd| fd["link"].as_str().unwrap())
            .collect();
        assert!(
            !links.iter().any(|l| l.contains("api-token")),
            "{case}: run still holds the credential's file open: {links:?}"
        );
        assert!(
            seen["parent_environ"]
                .as_str()
                .unwrap()
                .contains("TFE_OIDC_RUN_API_TOKEN_FILE"),
            "{case}: the parent's environment was not read: {seen:#}"
        );
        if case == "stdin" {
            assert_eq!(seen["stdin"], "/dev/null", "{case}");
            assert_eq!(seen["parent_fds"]["0"]["link"], "/dev/null", "{case}");
        }
        assert_empty(&tmp);
        f.assert_quiet(&output, &[]);
    }
}

/// Issue 21: SIGHUP (a closed ssh session), SIGQUIT, SIGUSR1 and SIGALRM, whose default action
/// would end `run` at once, are handled as SIGTERM is: forwarded to COMMAND (the probe dies of
/// it), then the Vault token is revoked and the directory deleted, and `run` exits 128 + signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hup_quit_usr1_and_alrm_are_forwarded_then_revoke_and_clean_up() {
    let Some(f) = fixture().await else { return };
    let vars = vault_vars(&f.bao.addr);
    for (signal, number) in [("HUP", 1), ("QUIT", 3), ("USR1", 10), ("ALRM", 14)] {
        let name = format!("signal-{signal}");
        let probe = f.probe(&name, 0, 0, 60);
        let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
        let (mut command, tmp) = f.command("prod", &borrowed(&vars), &probe);
        command.current_dir(f.files.path());
        let report = f.path(&name);
        let (output, took) = signal_once_ready(
            command,
            signal,
            || report.exists(),
            "the probe never wrote its report",
        )
        .await;
        assert!(took < Duration::from_secs(30), "{signal}: not forwarded");
        assert_eq!(
            output.status.code(),
            Some(128 + number),
            "{signal}: {output:?}"
        );
        f.assert_revoked_and_cleaned(&name, &output, &tmp).await;
    }
}

/// Issue 23: a runner whose own environment points the Vault and OpenBao CLIs elsewhere
/// (`BAO_TOKEN=root`, a `BAO_ADDR` and `BAO_AGENT_ADDR` nobody listens on, a namespace that
/// does not exist, `VAULT_SKIP_VERIFY`), with a root token in `~/.vault-token` too: `bao`
/// inside COMMAND still talks to the run's Vault with the run's token, under both prefixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_inside_command_uses_the_runs_token_whatever_the_runner_had() {
    let Some(f) = fixture().await else { return };
    let mut vars = vault_vars(&f.bao.addr);
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    vars.extend([
        ("BAO_TOKEN", "root".to_owned()),
        ("VAULT_TOKEN", "root".to_owned()),
        ("BAO_ADDR", closed.clone()),
        ("BAO_AGENT_ADDR", closed.clone()),
        ("VAULT_AGENT_ADDR", closed),
        ("BAO_NAMESPACE", "elsewhere".to_owned()),
        ("VAULT_SKIP_VERIFY", "true".to_owned()),
    ]);
    std::fs::write(f.bao.home.path().join(".vault-token"), "root").unwrap();
    let out = f.path("lookup");
    let script = format!(
        "bao token lookup -format=json > {out:?} && printf %s \"$BAO_TOKEN\" > {out:?}.bao && env > {out:?}.env"
    );
    let (command, tmp) = f.command("prod", &borrowed(&vars), &["sh", "-c", &script]);
    let output = run_to_end(command);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let lookup: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let policies = lookup["data"]["policies"].to_string();
    assert!(
        !policies.contains("root"),
        "bao used the runner's root token: {policies}"
    );
    let token = std::fs::read_to_string(format!("{}.bao", out.display())).unwrap();
    assert_ne!(token, "root");
    assert_eq!(
        lookup["data"]["id"],
        token.as_str(),
        "BAO_TOKEN is the run's token"
    );
    let env = std::fs::read_to_string(format!("{}.env", out.display())).unwrap();
    for gone in [
        "BAO_AGENT_ADDR",
        "VAULT_AGENT_ADDR",
        "BAO_NAMESPACE",
        "VAULT_SKIP_VERIFY",
    ] {
        assert!(!env.contains(&format!("{gone}=")), "{gone} reached COMMAND");
    }
    assert!(
        env.contains(&format!("BAO_ADDR={}\n", f.bao.addr)),
        "{output:?}"
    );
    assert_eq!(f.lookup(&token).await, 403, "revoked afterwards");
    assert_empty(&tmp);
    f.assert_quiet(&output, &[&token]);
}

/// A tfe-oidc API that no real service can be made to be: hostile (its `env` names what it
/// likes) or failing (`/v1/credentials/revoke` answers 502). A tiny HTTP server in this process;
/// it counts the calls to each route.
struct FakeApi {
    url: String,
    exchanges: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    revokes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    files: TempDir,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    async fn start(answer: Value, revoke_status: u16) -> FakeApi {
        use axum::http::StatusCode;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let exchanges = Arc::new(AtomicUsize::new(0));
        let revokes = Arc::new(AtomicUsize::new(0));
        let (e, r) = (exchanges.clone(), revokes.clone());
        let app = axum::Router::new()
            .route(
                "/v1/credentials",
                axum::routing::post(move || async move {
                    e.fetch_add(1, Ordering::SeqCst);
                    axum::Json(answer)
                }),
            )
            .route(
                "/v1/credentials/revoke",
                axum::routing::post(move || async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    let status = StatusCode::from_u16(revoke_status).unwrap();
                    let body = json!({"error": "upstream", "message": "vault_login default: vault is down", "revoked": {"default": "revoked"}});
                    (status, axum::Json(body))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("api-token"), "tfeoidc_fake\n").unwrap();
        FakeApi {
            url,
            exchanges,
            revokes,
            task,
            files,
        }
    }

    fn calls(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        (
            self.exchanges.load(Ordering::SeqCst),
            self.revokes.load(Ordering::SeqCst),
        )
    }

    /// `run` against this API with `extra` flags, running `command`, and its private TMPDIR.
    fn command(&self, extra: &[&str], command: &[&str]) -> (Command, TempDir) {
        self.command_at(&self.url, extra, command)
    }

    /// `command` with `url` as `--api`.
    fn command_at(&self, url: &str, extra: &[&str], command: &[&str]) -> (Command, TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let mut run = Command::new(binary());
        run.arg("run")
            .args(["--api", url, "--api-token-file"])
            .arg(self.files.path().join("api-token"))
            .args(run_flags("prod"))
            .args(extra)
            .arg("--")
            .args(command)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        (run, tmp)
    }
}

/// A Vault entry as the exchange answers it; nothing listens at its address.
fn fake_vault_answer(env: Value) -> Value {
    json!({
        "vault": {"default": {"address": "http://127.0.0.1:9", "namespace": null, "token": "hvs.fake",
                              "accessor": "a", "policies": [], "lease_duration": 60, "renewable": false},
                  "aliases": {}},
        "env": env,
        "not_before": 0
    })
}

/// Issue 21: an answer whose `env` names `LD_PRELOAD`, `PATH` or `BASH_ENV`, or whose aliases
/// hold a tag that would walk out of the private directory, is refused: COMMAND never runs (so
/// none of it reaches COMMAND), `run` exits 76 naming it, the answer's tokens are revoked and
/// nothing is left in TMPDIR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_undocumented_env_names_never_reaches_command() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("ran");
    let record = format!("env > {marker:?}");
    let vault_env = |extra: (&str, &str)| {
        let mut env = json!({"VAULT_ADDR": "http://127.0.0.1:9", "VAULT_TOKEN": "hvs.fake"});
        env[extra.0] = json!(extra.1);
        env
    };
    let mut traversal = fake_vault_answer(json!({}));
    traversal["vault"]["aliases"] = json!({"../../escaped": traversal["vault"]["default"].clone()});
    let cases = [
        (
            fake_vault_answer(vault_env(("LD_PRELOAD", "/tmp/evil.so"))),
            "\"LD_PRELOAD\"",
        ),
        (
            fake_vault_answer(vault_env(("PATH", "/tmp/evil"))),
            "\"PATH\"",
        ),
        (
            fake_vault_answer(vault_env(("BASH_ENV", "/tmp/evil.sh"))),
            "\"BASH_ENV\"",
        ),
        (traversal, "\"../../escaped\""),
    ];
    for (answer, needle) in cases {
        let api = FakeApi::start(answer, 200).await;
        let (command, tmp) = api.command(&[], &["sh", "-c", &record]);
        let output = run_to_end(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(76), "{needle}: {stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!marker.exists(), "COMMAND ran with {needle}");
        assert_eq!(
            api.calls(),
            (1, 1),
            "{needle}: the answer's tokens were revoked"
        );
        assert_empty(&tmp);
        assert!(!stderr.contains("hvs.fake"), "{stderr}");
    }
}

/// Issue 21: a revocation that keeps failing (502, tried three times) is not a silent success:
/// with a COMMAND that succeeded `run` exits 70, with one that failed it keeps its status, and
/// both say on stderr that the tokens stay valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_revocation_is_reported_and_never_exits_0() {
    let api = FakeApi::start(fake_vault_answer(json!({"VAULT_TOKEN": "hvs.fake"})), 502).await;
    for (command, code) in [("true", 70), ("exit 3", 3)] {
        let (run, tmp) = api.command(&[], &["sh", "-c", command]);
        let output = run_to_end(run);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{command}: {stderr}");
        assert!(stderr.contains("could not be revoked"), "{stderr}");
        assert!(stderr.contains("stay valid"), "{stderr}");
        assert!(!stderr.contains("hvs.fake"), "{stderr}");
        assert_empty(&tmp);
    }
    assert_eq!(
        api.calls(),
        (2, 6),
        "each run tried the revocation three times"
    );
}

/// Bad input stops `run` with 64 before it calls the API: an empty or relative TMPDIR, a plain
/// `http://` API off loopback without `--allow-insecure-http`, a token file over 16 KiB, and a
/// token file holding two words. With `--allow-insecure-http` the same URL is tried (and is
/// unreachable here: 69).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_any_call() {
    let api = FakeApi::start(fake_vault_answer(json!({})), 200).await;
    let token = api.files.path().join("api-token");
    let big = "a".repeat(16 * 1024 + 1);
    let plain = "http://tfe-oidc.invalid:9443";
    let cases: [(&str, &str, &str, Option<&str>); 5] = [
        ("not an absolute path", &api.url, "tfeoidc_fake", Some("")),
        (
            "not an absolute path",
            &api.url,
            "tfeoidc_fake",
            Some("tmp"),
        ),
        ("--allow-insecure-http", plain, "tfeoidc_fake", None),
        ("larger than 16 KiB", &api.url, &big, None),
        ("one token alone", &api.url, "tfeoidc_a tfeoidc_b", None),
    ];
    for (needle, url, content, tmpdir) in cases {
        std::fs::write(&token, content).unwrap();
        let (mut command, _tmp) = api.command_at(url, &[], &["true"]);
        if let Some(tmpdir) = tmpdir {
            command.env("TMPDIR", tmpdir);
        }
        let output = run_to_end(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{needle}: {stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!stderr.contains("tfeoidc_"), "{stderr}");
    }
    assert_eq!(api.calls(), (0, 0), "no bad input reached the API");
    std::fs::write(&token, "tfeoidc_fake").unwrap();
    let (command, _tmp) = api.command_at(plain, &["--allow-insecure-http"], &["true"]);
    let output = run_to_end(command);
    assert_eq!(output.status.code(), Some(69), "{output:?}");
}
