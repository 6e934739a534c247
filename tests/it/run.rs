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
    mut command: Command,
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
        .args(["-TERM", &child.id().to_string()])
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
