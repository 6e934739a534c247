//! `tfe-oidc token issue`: one token of any kind, minted from the key store on disk.
//!
//! The flags map onto the members of a `POST /v1/tokens` body, so the same rules and messages
//! apply: `--module` asks for a module-test token, `--stack` for a Stacks deployment token,
//! neither for a workspace run token. Flags of two kinds together are a usage error from clap.

use clap::Args;

use super::{ConfigArg, Failure, load};
use crate::keys::SystemClock;
use crate::token::claims::{NamedInput, RunIdInput};
use crate::token::kinds::TokenInput;
use crate::token::module_test::ModuleInput;
use crate::token::stack::{DeploymentInput, PlanInput};
use crate::token::{TokenIssuer, TokenRequest};

#[derive(Debug, Args)]
pub struct IssueArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Organization name.
    #[arg(long)]
    pub org: String,
    /// Organization ID (org-…).
    #[arg(long)]
    pub org_id: String,
    /// Project name (workspace runs and Stacks).
    #[arg(long, required_unless_present = "module", conflicts_with = "module")]
    pub project: Option<String>,
    /// Project ID (prj-…).
    #[arg(long, required_unless_present = "module", conflicts_with = "module")]
    pub project_id: Option<String>,
    /// Workspace name (workspace runs).
    #[arg(long, required_unless_present_any = ["module", "stack"], conflicts_with_all = ["module", "stack"])]
    pub workspace: Option<String>,
    /// Workspace ID (ws-…).
    #[arg(long, required_unless_present_any = ["module", "stack"], conflicts_with_all = ["module", "stack"])]
    pub workspace_id: Option<String>,
    /// Run ID: run-… for a workspace run, trun-… for a module test.
    #[arg(long, required_unless_present = "stack", conflicts_with = "stack")]
    pub run_id: Option<String>,
    /// plan or apply (a module test is always plan, the default with --module).
    #[arg(long, required_unless_present_any = ["module", "stack"], conflicts_with = "stack")]
    pub phase: Option<String>,
    /// Mint a module-test token for this registry module.
    #[arg(long, conflicts_with = "stack")]
    pub module: Option<String>,
    /// Mint a Stacks deployment token for this stack (its name).
    #[arg(
        long,
        requires = "stack_id",
        requires = "deployment",
        requires = "operation",
        requires = "plan_id"
    )]
    pub stack: Option<String>,
    /// Stack ID (st-…).
    #[arg(long, requires = "stack", conflicts_with_all = ["workspace", "module"])]
    pub stack_id: Option<String>,
    /// Stacks deployment name.
    #[arg(long, requires = "stack", conflicts_with_all = ["workspace", "module"])]
    pub deployment: Option<String>,
    /// Stacks operation: plan or apply.
    #[arg(long, requires = "stack", conflicts_with_all = ["workspace", "module"])]
    pub operation: Option<String>,
    /// Stack plan ID (sp-…).
    #[arg(long, requires = "stack", conflicts_with_all = ["workspace", "module"])]
    pub plan_id: Option<String>,
    #[arg(long)]
    pub audience: Option<String>,
    /// Lifetime such as 20m or 2h (default: tokens.default_ttl; 10m for a module test).
    #[arg(long)]
    pub ttl: Option<String>,
}

impl IssueArgs {
    /// The members of the `POST /v1/tokens` body these flags stand for.
    fn into_input(self) -> TokenInput {
        let named = |id: Option<String>, name: Option<String>| {
            Some(NamedInput {
                id: id?,
                name: name?,
            })
        };
        let phase = match (&self.phase, &self.module) {
            (None, Some(_)) => Some("plan".to_owned()),
            _ => self.phase,
        };
        TokenInput {
            organization: NamedInput {
                id: self.org_id,
                name: self.org,
            },
            project: named(self.project_id, self.project),
            workspace: named(self.workspace_id, self.workspace),
            run: self.run_id.map(|id| RunIdInput {
                id,
                phase: phase.unwrap_or_default(),
            }),
            module: self.module.map(|name| ModuleInput { name }),
            stack: named(self.stack_id, self.stack),
            deployment: self.deployment.map(|name| DeploymentInput { name }),
            operation: self.operation,
            plan: self.plan_id.map(|id| PlanInput { id }),
            audience: self.audience,
            ttl: self.ttl,
        }
    }
}

pub(super) fn token_issue(args: IssueArgs) -> Result<(), Failure> {
    let config = load(&args.config)?;
    let request = TokenRequest::parse(args.into_input())?;
    let runtime = super::runtime()?;
    let loaded = crate::service::read_keys(&config, runtime.handle().clone())?;
    let current = loaded.set.current();
    // Never outlive what the key's retirement will cover: the server's max_ttl recorded on it.
    let mut policy = config.tokens.clone();
    if let Some(recorded) = current.and_then(|c| c.max_token_ttl) {
        policy.max_ttl = policy.max_ttl.min(std::time::Duration::from_secs(recorded));
    }
    let issuer = TokenIssuer::new(config.issuer.clone(), policy);
    let checked = issuer.check(&request)?;
    let signer = current
        .and_then(|c| loaded.signers.get(&c.kid))
        .ok_or_else(|| {
            Failure::failed(format!(
                "the key store {} has no current key: start `tfe-oidc serve` once to create it",
                config.keys.dir.display()
            ))
        })?;
    let now = crate::keys::Clock::now(&SystemClock);
    let issued = runtime
        .block_on(issuer.issue_checked(&request.subject, checked, signer, now))
        .map_err(|e| Failure::failed(format!("no token could be signed: {e}")))?;
    crate::telemetry::Audit::open(config.audit_path.as_deref())
        .and_then(|audit| audit.token_issued(&issued, "cli"))
        .map_err(|e| {
            Failure::failed(format!(
                "audit.path: {e}: the token was not handed out, as no audit line records it"
            ))
        })?;
    println!("{}", issued.token);
    Ok(())
}
