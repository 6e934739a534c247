//! Stacks deployment tokens: what a Stack deployment's `identity_token` blocks present.
//!
//! TFE's shape: `sub = organization:<org>:project:<project>:stack:<stack>:deployment:<deployment>:operation:<operation>`,
//! at most 127 characters, and the claims `terraform_operation`,
//! `terraform_stack_deployment_name`, `terraform_stack_id`, `terraform_stack_name`,
//! `terraform_project_id`, `terraform_project_name`, `terraform_organization_id`,
//! `terraform_organization_name` and `terraform_plan_id`, in that order.
//!
//! Where TFE's documentation is silent this module chooses (and `docs/token-kinds.md` says so):
//! the operation is `plan` or `apply`; stack IDs are `st-…` and plan IDs `sp-…`; stack and
//! deployment names follow the workspace-name rules; `nbf = iat − 5 s` and the TTL follows
//! `tokens.default_ttl` and `tokens.max_ttl`, as for workspace runs.

use serde::{Deserialize, Serialize};

use super::claims::{Audience, NBF_SKEW_SECS, NamedInput, RunPhase};
use super::input::{FieldError, prefixed_id, project_name, simple_name, truncate};

/// TFE's limit on a Stacks token's `sub`, in characters.
pub const MAX_SUBJECT: usize = 127;

/// `{"name"}`: the deployment of the stack.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentInput {
    pub name: String,
}

/// `{"id"}`: the Stack plan the operation belongs to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    pub id: String,
}

/// The raw inputs of a Stacks deployment token, as the API body and `token issue` carry them.
#[derive(Debug, Clone, Default)]
pub struct StackInput {
    pub organization: NamedInput,
    pub project: NamedInput,
    pub stack: NamedInput,
    pub deployment: DeploymentInput,
    pub operation: String,
    pub plan: PlanInput,
}

/// A Stacks input that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// One field is at fault.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// Every field is valid, but together they make a `sub` longer than TFE allows.
    #[error(
        "the sub of this Stacks deployment token would be {0} characters, over TFE's limit of {MAX_SUBJECT}: shorten organization.name, project.name, stack.name or deployment.name"
    )]
    SubjectTooLong(usize),
}

/// A validated Stacks deployment: every field safe to put in a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackContext {
    pub organization_id: String,
    pub organization_name: String,
    pub project_id: String,
    pub project_name: String,
    pub stack_id: String,
    pub stack_name: String,
    pub deployment_name: String,
    pub operation: RunPhase,
    pub plan_id: String,
}

impl StackContext {
    /// Checks every field, returning the first problem with its JSON path, then the length of
    /// the `sub` they make.
    pub fn parse(input: &StackInput) -> Result<StackContext, StackError> {
        let context = StackContext {
            organization_id: prefixed_id("organization.id", &input.organization.id, "org-")?,
            organization_name: simple_name("organization.name", &input.organization.name)?,
            project_id: prefixed_id("project.id", &input.project.id, "prj-")?,
            project_name: project_name("project.name", &input.project.name)?,
            stack_id: prefixed_id("stack.id", &input.stack.id, "st-")?,
            stack_name: simple_name("stack.name", &input.stack.name)?,
            deployment_name: simple_name("deployment.name", &input.deployment.name)?,
            operation: operation(&input.operation)?,
            plan_id: prefixed_id("plan.id", &input.plan.id, "sp-")?,
        };
        let length = context.subject().chars().count();
        if length > MAX_SUBJECT {
            return Err(StackError::SubjectTooLong(length));
        }
        Ok(context)
    }

    /// `organization:<org>:project:<project>:stack:<stack>:deployment:<deployment>:operation:<operation>`
    pub fn subject(&self) -> String {
        format!(
            "organization:{}:project:{}:stack:{}:deployment:{}:operation:{}",
            self.organization_name,
            self.project_name,
            self.stack_name,
            self.deployment_name,
            self.operation.as_str()
        )
    }
}

fn operation(text: &str) -> Result<RunPhase, FieldError> {
    RunPhase::parse("operation", text).map_err(|_| {
        FieldError::new(
            "operation",
            format!(
                "{:?} is not a Stacks operation: use \"plan\" or \"apply\"",
                truncate(text)
            ),
        )
    })
}

/// The claim names of a Stacks deployment token, in TFE's order.
pub const CLAIMS: &[&str] = &[
    "jti",
    "iss",
    "aud",
    "iat",
    "nbf",
    "exp",
    "sub",
    "terraform_operation",
    "terraform_stack_deployment_name",
    "terraform_stack_id",
    "terraform_stack_name",
    "terraform_project_id",
    "terraform_project_name",
    "terraform_organization_id",
    "terraform_organization_name",
    "terraform_plan_id",
];

/// The claims of a Stacks deployment token, in TFE's order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StackClaims {
    pub jti: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub sub: String,
    pub terraform_operation: RunPhase,
    pub terraform_stack_deployment_name: String,
    pub terraform_stack_id: String,
    pub terraform_stack_name: String,
    pub terraform_project_id: String,
    pub terraform_project_name: String,
    pub terraform_organization_id: String,
    pub terraform_organization_name: String,
    pub terraform_plan_id: String,
}

impl StackClaims {
    pub fn new(
        stack: &StackContext,
        iss: &str,
        aud: &Audience,
        jti: String,
        iat: u64,
        exp: u64,
    ) -> StackClaims {
        StackClaims {
            jti,
            iss: iss.to_owned(),
            aud: aud.as_str().to_owned(),
            iat,
            nbf: iat.saturating_sub(NBF_SKEW_SECS),
            exp,
            sub: stack.subject(),
            terraform_operation: stack.operation,
            terraform_stack_deployment_name: stack.deployment_name.clone(),
            terraform_stack_id: stack.stack_id.clone(),
            terraform_stack_name: stack.stack_name.clone(),
            terraform_project_id: stack.project_id.clone(),
            terraform_project_name: stack.project_name.clone(),
            terraform_organization_id: stack.organization_id.clone(),
            terraform_organization_name: stack.organization_name.clone(),
            terraform_plan_id: stack.plan_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(id: &str, name: &str) -> NamedInput {
        NamedInput {
            id: id.into(),
            name: name.into(),
        }
    }

    fn input() -> StackInput {
        StackInput {
            organization: named("org-GRNbCjYNpBB6NEH9", "acme"),
            project: named("prj-vegSA59s1XPwMr2t", "Default Project"),
            stack: named("st-Ab12Cd34Ef56Gh78", "network"),
            deployment: DeploymentInput {
                name: "production".into(),
            },
            operation: "apply".into(),
            plan: PlanInput {
                id: "sp-Zx98Yw76Vu54Ts32".into(),
            },
        }
    }

    #[test]
    fn subject_and_claim_order_match_tfe() {
        let stack = StackContext::parse(&input()).unwrap();
        assert_eq!(
            stack.subject(),
            "organization:acme:project:Default Project:stack:network:deployment:production:operation:apply"
        );
        let aud = Audience::parse("vault.workload.identity").unwrap();
        let claims = StackClaims::new(&stack, "https://x", &aud, "j".into(), 1000, 2000);
        assert_eq!(claims.nbf, 995);
        let text = serde_json::to_string(&claims).unwrap();
        let names: Vec<&str> = text
            .split(['{', ','])
            .filter_map(|member| member.split('"').nth(1))
            .collect();
        assert_eq!(
            names,
            [
                "jti",
                "iss",
                "aud",
                "iat",
                "nbf",
                "exp",
                "sub",
                "terraform_operation",
                "terraform_stack_deployment_name",
                "terraform_stack_id",
                "terraform_stack_name",
                "terraform_project_id",
                "terraform_project_name",
                "terraform_organization_id",
                "terraform_organization_name",
                "terraform_plan_id",
            ]
        );
        assert!(text.contains(r#""terraform_operation":"apply""#), "{text}");
    }

    #[test]
    fn injection_and_wrong_prefixes_are_refused_naming_the_field() {
        type Mutation = fn(&mut StackInput);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |i| i.stack.name = "net:deployment:prod".into(),
                "stack.name",
            ),
            (|i| i.stack.name = "net*".into(), "stack.name"),
            (|i| i.stack.name = "n\u{0435}t".into(), "stack.name"),
            (
                |i| i.deployment.name = "prod:operation:apply".into(),
                "deployment.name",
            ),
            (|i| i.deployment.name = "pr*d".into(), "deployment.name"),
            (|i| i.deployment.name = "pr\nod".into(), "deployment.name"),
            (|i| i.project.name = "x:stack:y".into(), "project.name"),
            (|i| i.stack.id = "ws-Ab12".into(), "stack.id"),
            (|i| i.plan.id = "run-Ab12".into(), "plan.id"),
            (|i| i.operation = "destroy".into(), "operation"),
        ];
        for (mutate, field) in cases {
            let mut bad = input();
            mutate(&mut bad);
            match StackContext::parse(&bad) {
                Err(StackError::Field(e)) => assert_eq!(e.field, field, "{e}"),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_sub_over_127_characters_is_refused_naming_the_limit() {
        let mut long = input();
        long.stack.name = "s".repeat(40);
        long.deployment.name = "d".repeat(40);
        let error = StackContext::parse(&long).unwrap_err();
        assert!(matches!(error, StackError::SubjectTooLong(n) if n > MAX_SUBJECT));
        assert!(error.to_string().contains("127"), "{error}");
        // Exactly at the limit is allowed.
        let mut edge = input();
        let base = StackContext::parse(&input()).unwrap().subject().len();
        edge.deployment.name = "d".repeat("production".len() + MAX_SUBJECT - base);
        assert_eq!(
            StackContext::parse(&edge).unwrap().subject().len(),
            MAX_SUBJECT
        );
    }
}
