//! `tfe-oidc run [options] -- COMMAND [ARGS...]`: the flags, and the hand-over to `crate::run`.
//!
//! Each flag may come from the environment variable its `--help` names, so that a runner can
//! set the run context once and wrap every phase's command the same way. None of these variables
//! reaches COMMAND.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;

use super::{Failure, runtime};
use crate::run::{ApiClient, ApiToken, RunOptions, Signals, execute, harden, temp_base, variables};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The tfe-oidc API listener, e.g. https://tfe-oidc.internal:8443.
    #[arg(long, env = "TFE_OIDC_RUN_API")]
    pub api: String,
    /// The caller's credential: a file holding an API token with the credentials scope or an
    /// upstream OIDC token, `-` for standard input, or `/dev/fd/N`; a descriptor is closed
    /// before COMMAND starts (never printed).
    #[arg(long, env = "TFE_OIDC_RUN_API_TOKEN_FILE")]
    pub api_token_file: PathBuf,
    /// Allow a plain http:// --api that is not loopback (the token and the credentials then
    /// cross the network in clear).
    #[arg(long, env = "TFE_OIDC_RUN_ALLOW_INSECURE_HTTP")]
    pub allow_insecure_http: bool,
    /// PEM CA certificate(s) of the API listener (default: this host's trust store).
    #[arg(long, env = "TFE_OIDC_RUN_API_CA_FILE")]
    pub api_ca_file: Option<PathBuf>,
    /// Organization name.
    #[arg(long, env = "TFE_OIDC_RUN_ORG")]
    pub org: String,
    /// Organization ID (org-…).
    #[arg(long, env = "TFE_OIDC_RUN_ORG_ID")]
    pub org_id: String,
    /// Project name.
    #[arg(long, env = "TFE_OIDC_RUN_PROJECT")]
    pub project: String,
    /// Project ID (prj-…).
    #[arg(long, env = "TFE_OIDC_RUN_PROJECT_ID")]
    pub project_id: String,
    /// Workspace name.
    #[arg(long, env = "TFE_OIDC_RUN_WORKSPACE")]
    pub workspace: String,
    /// Workspace ID (ws-…).
    #[arg(long, env = "TFE_OIDC_RUN_WORKSPACE_ID")]
    pub workspace_id: String,
    /// Run ID (run-…).
    #[arg(long, env = "TFE_OIDC_RUN_ID")]
    pub run_id: String,
    /// The phase this command runs: plan or apply.
    #[arg(long, env = "TFE_OIDC_RUN_PHASE")]
    pub phase: String,
    /// The command to run with the credentials, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

impl RunArgs {
    fn run_body(&self) -> serde_json::Value {
        serde_json::json!({
            "organization": {"id": self.org_id, "name": self.org},
            "project": {"id": self.project_id, "name": self.project},
            "workspace": {"id": self.workspace_id, "name": self.workspace},
            "run": {"id": self.run_id, "phase": self.phase},
        })
    }
}

fn read(flag: &str, path: &PathBuf) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::usage(format!("{flag} {}: {e}", path.display())))
}

pub(super) fn run(args: RunArgs) -> Result<u8, Failure> {
    harden();
    let token = ApiToken::read(&args.api_token_file)?;
    let tmp = temp_base(std::env::var_os("TMPDIR")).map_err(Failure::usage)?;
    let ca = match &args.api_ca_file {
        Some(path) => Some(read("--api-ca-file", path)?),
        None => None,
    };
    let variables = variables(std::env::vars_os());
    runtime()?.block_on(async {
        let signals =
            Signals::new().map_err(|e| Failure::failed(format!("cannot handle signals: {e}")))?;
        let api = ApiClient::new(&args.api, token, ca.as_deref(), args.allow_insecure_http)?;
        let options = RunOptions {
            api,
            run: args.run_body(),
            command: args.command,
            tmp,
        };
        Ok(execute(options, variables, signals).await?)
    })
}
