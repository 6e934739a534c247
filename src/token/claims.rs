//! A workspace run's identity and the claims it becomes.
//!
//! Every input is checked through the shared rules of `input.rs`, so that no claim can be forged
//! through another: names cannot hold `:`, `*`, control or non-ASCII characters, IDs carry their
//! prefix, the phase is `plan` or `apply`. Once a `RunContext` exists, the claims built from it are
//! safe. The other kinds (module tests, Stacks deployments) live in `module_test.rs` and
//! `stack.rs`; `kinds.rs` chooses among them.

use serde::{Deserialize, Serialize};

pub use super::input::FieldError;
use super::input::{prefixed_id, project_name, simple_name, truncate};

/// The run phase a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunPhase {
    Plan,
    Apply,
}

impl RunPhase {
    pub fn parse(field: &str, text: &str) -> Result<RunPhase, FieldError> {
        match text {
            "plan" => Ok(RunPhase::Plan),
            "apply" => Ok(RunPhase::Apply),
            _ => Err(FieldError::new(
                field,
                format!(
                    "{:?} is not a run phase: use \"plan\" or \"apply\"",
                    truncate(text)
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::Plan => "plan",
            RunPhase::Apply => "apply",
        }
    }
}

/// An `aud` value: 1–256 printable characters, no whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience(String);

/// Text that cannot be an audience.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudienceError {
    #[error("an audience must be 1 to 256 characters")]
    Length,
    #[error(
        "an audience must be printable ASCII, without whitespace, control characters or `*` (e.g. vault.workload.identity)"
    )]
    Characters,
}

impl Audience {
    pub fn parse(text: &str) -> Result<Audience, AudienceError> {
        if text.is_empty() || text.len() > 256 {
            return Err(AudienceError::Length);
        }
        // Printable ASCII only: a verifier compares audiences byte for byte, and look-alike or
        // bidirectional-control characters would make two audiences that read the same differ.
        // `*` is the allowlist's wildcard, never part of an audience.
        if !text.bytes().all(|b| b.is_ascii_graphic() && b != b'*') {
            return Err(AudienceError::Characters);
        }
        Ok(Audience(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The raw inputs that name a run, as they arrive from the API or the command line.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    pub organization: NamedInput,
    pub project: NamedInput,
    pub workspace: NamedInput,
    pub run: RunIdInput,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedInput {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunIdInput {
    pub id: String,
    pub phase: String,
}

/// A validated run identity: every field safe to put in a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunContext {
    pub organization_id: String,
    pub organization_name: String,
    pub project_id: String,
    pub project_name: String,
    pub workspace_id: String,
    pub workspace_name: String,
    pub run_id: String,
    pub phase: RunPhase,
}

impl RunContext {
    /// Checks every field, returning the first problem with its JSON path.
    pub fn parse(input: &RunInput) -> Result<RunContext, FieldError> {
        Ok(RunContext {
            organization_id: prefixed_id("organization.id", &input.organization.id, "org-")?,
            organization_name: simple_name("organization.name", &input.organization.name)?,
            project_id: prefixed_id("project.id", &input.project.id, "prj-")?,
            project_name: project_name("project.name", &input.project.name)?,
            workspace_id: prefixed_id("workspace.id", &input.workspace.id, "ws-")?,
            workspace_name: simple_name("workspace.name", &input.workspace.name)?,
            run_id: prefixed_id("run.id", &input.run.id, "run-")?,
            phase: RunPhase::parse("run.phase", &input.run.phase)?,
        })
    }

    /// `organization:<org>:project:<project>:workspace:<workspace>`
    pub fn full_workspace(&self) -> String {
        format!(
            "organization:{}:project:{}:workspace:{}",
            self.organization_name, self.project_name, self.workspace_name
        )
    }

    /// `<full workspace>:run_phase:<phase>`
    pub fn subject(&self) -> String {
        format!(
            "{}:run_phase:{}",
            self.full_workspace(),
            self.phase.as_str()
        )
    }
}

/// The claim names of a workspace run token, in TFE's order.
pub const RUN_CLAIMS: &[&str] = &[
    "jti",
    "iss",
    "aud",
    "iat",
    "nbf",
    "exp",
    "sub",
    "terraform_organization_id",
    "terraform_organization_name",
    "terraform_project_id",
    "terraform_project_name",
    "terraform_workspace_id",
    "terraform_workspace_name",
    "terraform_full_workspace",
    "terraform_run_id",
    "terraform_run_phase",
];

/// The claims of a workspace run token, in TFE's order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub jti: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub sub: String,
    pub terraform_organization_id: String,
    pub terraform_organization_name: String,
    pub terraform_project_id: String,
    pub terraform_project_name: String,
    pub terraform_workspace_id: String,
    pub terraform_workspace_name: String,
    pub terraform_full_workspace: String,
    pub terraform_run_id: String,
    pub terraform_run_phase: RunPhase,
}

/// How many seconds `nbf` is before `iat`, for verifiers whose clock is slightly behind.
pub const NBF_SKEW_SECS: u64 = 5;

impl Claims {
    pub fn new(
        run: &RunContext,
        iss: &str,
        aud: &Audience,
        jti: String,
        iat: u64,
        exp: u64,
    ) -> Claims {
        Claims {
            jti,
            iss: iss.to_owned(),
            aud: aud.as_str().to_owned(),
            iat,
            nbf: iat.saturating_sub(NBF_SKEW_SECS),
            exp,
            sub: run.subject(),
            terraform_organization_id: run.organization_id.clone(),
            terraform_organization_name: run.organization_name.clone(),
            terraform_project_id: run.project_id.clone(),
            terraform_project_name: run.project_name.clone(),
            terraform_workspace_id: run.workspace_id.clone(),
            terraform_workspace_name: run.workspace_name.clone(),
            terraform_full_workspace: run.full_workspace(),
            terraform_run_id: run.run_id.clone(),
            terraform_run_phase: run.phase,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> RunInput {
        RunInput {
            organization: NamedInput {
                id: "org-GRNbCjYNpBB6NEH9".into(),
                name: "acme".into(),
            },
            project: NamedInput {
                id: "prj-vegSA59s1XPwMr2t".into(),
                name: "Default Project".into(),
            },
            workspace: NamedInput {
                id: "ws-mbsd5E3Ktt5Rg2Xm".into(),
                name: "prod".into(),
            },
            run: RunIdInput {
                id: "run-X3n1AUXNGWbfECsJ".into(),
                phase: "apply".into(),
            },
        }
    }

    #[test]
    fn subject_and_full_workspace_match_tfe() {
        let run = RunContext::parse(&input()).unwrap();
        assert_eq!(
            run.subject(),
            "organization:acme:project:Default Project:workspace:prod:run_phase:apply"
        );
        assert_eq!(
            run.full_workspace(),
            "organization:acme:project:Default Project:workspace:prod"
        );
    }

    #[test]
    fn claim_injection_through_names_is_refused() {
        type Mutation = fn(&mut RunInput);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |i| i.project.name = "x:workspace:prod".into(),
                "project.name",
            ),
            (|i| i.workspace.name = "prod*".into(), "workspace.name"),
            (
                |i| i.organization.name = "ac\nme".into(),
                "organization.name",
            ),
            (|i| i.project.name = " lead".into(), "project.name"),
            (|i| i.project.name = "two  spaces".into(), "project.name"),
            (|i| i.workspace.name = "x".repeat(91), "workspace.name"),
            (|i| i.workspace.id = "prj-abc".into(), "workspace.id"),
            (|i| i.run.id = "run-".into(), "run.id"),
            (|i| i.run.id = "run-abc:def".into(), "run.id"),
            (|i| i.run.phase = "destroy".into(), "run.phase"),
            (|i| i.organization.name = "".into(), "organization.name"),
        ];
        for (mutate, field) in cases {
            let mut bad = input();
            mutate(&mut bad);
            assert_eq!(RunContext::parse(&bad).unwrap_err().field, field);
        }
    }

    #[test]
    fn nbf_is_five_seconds_before_iat() {
        let run = RunContext::parse(&input()).unwrap();
        let claims = Claims::new(
            &run,
            "https://x",
            &Audience::parse("a").unwrap(),
            "j".into(),
            1000,
            2000,
        );
        assert_eq!(claims.nbf, 995);
    }
}
