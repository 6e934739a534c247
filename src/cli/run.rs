//! `tfe-oidc run [options] -- COMMAND [ARGS...]`: the flags, and the hand-over to `crate::run`.
//!
//! Each flag may come from the environment variable its `--help` names, so that a runner can
//! set the run context once and wrap every phase's command the same way.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;

use super::{Failure, runtime};
use crate::run::{ApiClient, ApiToken, RunOptions, Signals, execute, variables};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The tfe-oidc API listener, e.g. https://tfe-oidc.internal:8443.
    #[arg(long, env = "TFE_OIDC_RUN_API")]
    pub api: String,
    /// A file whose first line is an API token with the credentials scope (never printed).
    #[arg(long, env = "TFE_OIDC_RUN_API_TOKEN_FILE")]
    pub api_token_file: PathBuf,
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
    let token_text = read("--api-token-file", &args.api_token_file)?;
    let token = std::str::from_utf8(&token_text)
        .ok()
        .and_then(ApiToken::from_file_text)
        .ok_or_else(|| {
            Failure::usage(format!(
                "--api-token-file {}: holds no token: put the API token on its first line",
                args.api_token_file.display()
            ))
        })?;
    let ca = match &args.api_ca_file {
        Some(path) => Some(read("--api-ca-file", path)?),
        None => None,
    };
    let variables = variables(std::env::vars_os());
    runtime()?.block_on(async {
        let signals =
            Signals::new().map_err(|e| Failure::failed(format!("cannot handle signals: {e}")))?;
        let api = ApiClient::new(&args.api, token, ca.as_deref())?;
        let options = RunOptions {
            api,
            run: args.run_body(),
            command: args.command,
        };
        Ok(execute(options, variables, signals).await?)
    })
}
