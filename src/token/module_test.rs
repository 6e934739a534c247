//! Module-test tokens: what the private registry's `terraform test` runs present.
//!
//! TFE's shape: `sub = organization:<org>:module:<module>:operation:test_run`, the claims
//! `terraform_run_phase` (always `plan`), `terraform_organization_id`,
//! `terraform_organization_name` and `terraform_run_id` (`trun-…`), and no workspace, project or
//! `terraform_full_workspace` claim. The TTL defaults to 600 s within 300–1800 s, and
//! `nbf = iat − 30 s`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::claims::{Audience, NamedInput, RunIdInput, RunPhase};
use super::input::{FieldError, prefixed_id, simple_name};

/// `nbf` is this many seconds before `iat` (TFE's "30-second clock skew mitigation").
pub const NBF_SKEW_SECS: u64 = 30;
/// The TTL when a request names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// The shortest TTL TFE allows a module-test token.
pub const MIN_TTL: Duration = Duration::from_secs(300);
/// The longest TTL TFE allows a module-test token.
pub const MAX_TTL: Duration = Duration::from_secs(1800);

/// `{"name"}`: the registry module whose tests run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleInput {
    pub name: String,
}

/// A validated module-test run: every field safe to put in a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleTestContext {
    pub organization_id: String,
    pub organization_name: String,
    pub module_name: String,
    pub run_id: String,
}

impl ModuleTestContext {
    /// Checks every field, returning the first problem with its JSON path.
    pub fn parse(
        organization: &NamedInput,
        module: &ModuleInput,
        run: &RunIdInput,
    ) -> Result<ModuleTestContext, FieldError> {
        let context = ModuleTestContext {
            organization_id: prefixed_id("organization.id", &organization.id, "org-")?,
            organization_name: simple_name("organization.name", &organization.name)?,
            module_name: simple_name("module.name", &module.name)?,
            run_id: prefixed_id("run.id", &run.id, "trun-")?,
        };
        if RunPhase::parse("run.phase", &run.phase)? != RunPhase::Plan {
            return Err(FieldError::new(
                "run.phase",
                "a module test run is always \"plan\"",
            ));
        }
        Ok(context)
    }

    /// `organization:<org>:module:<module>:operation:test_run`
    pub fn subject(&self) -> String {
        format!(
            "organization:{}:module:{}:operation:test_run",
            self.organization_name, self.module_name
        )
    }
}

/// The claim names of a module-test token, in TFE's order.
pub const CLAIMS: &[&str] = &[
    "jti",
    "iss",
    "aud",
    "iat",
    "nbf",
    "exp",
    "sub",
    "terraform_run_phase",
    "terraform_organization_id",
    "terraform_organization_name",
    "terraform_run_id",
];

/// The claims of a module-test token, in TFE's order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleTestClaims {
    pub jti: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub sub: String,
    pub terraform_run_phase: RunPhase,
    pub terraform_organization_id: String,
    pub terraform_organization_name: String,
    pub terraform_run_id: String,
}

impl ModuleTestClaims {
    pub fn new(
        test: &ModuleTestContext,
        iss: &str,
        aud: &Audience,
        jti: String,
        iat: u64,
        exp: u64,
    ) -> ModuleTestClaims {
        ModuleTestClaims {
            jti,
            iss: iss.to_owned(),
            aud: aud.as_str().to_owned(),
            iat,
            nbf: iat.saturating_sub(NBF_SKEW_SECS),
            exp,
            sub: test.subject(),
            terraform_run_phase: RunPhase::Plan,
            terraform_organization_id: test.organization_id.clone(),
            terraform_organization_name: test.organization_name.clone(),
            terraform_run_id: test.run_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> (NamedInput, ModuleInput, RunIdInput) {
        (
            NamedInput {
                id: "org-GRNbCjYNpBB6NEH9".into(),
                name: "acme".into(),
            },
            ModuleInput { name: "vpc".into() },
            RunIdInput {
                id: "trun-KFg8DSiRz4E37mdJ".into(),
                phase: "plan".into(),
            },
        )
    }

    #[test]
    fn subject_and_claims_match_tfe() {
        let (org, module, run) = inputs();
        let test = ModuleTestContext::parse(&org, &module, &run).unwrap();
        assert_eq!(
            test.subject(),
            "organization:acme:module:vpc:operation:test_run"
        );
        let aud = Audience::parse("aws.workload.identity").unwrap();
        let claims =
            ModuleTestClaims::new(&test, "https://x", &aud, "j".into(), 1705334400, 1705335000);
        assert_eq!(claims.nbf, 1705334370);
        let text = serde_json::to_string(&claims).unwrap();
        assert!(
            text.ends_with(r#""sub":"organization:acme:module:vpc:operation:test_run","terraform_run_phase":"plan","terraform_organization_id":"org-GRNbCjYNpBB6NEH9","terraform_organization_name":"acme","terraform_run_id":"trun-KFg8DSiRz4E37mdJ"}"#),
            "{text}"
        );
    }

    #[test]
    fn injection_and_wrong_prefixes_are_refused_naming_the_field() {
        type Mutation = fn(&mut (NamedInput, ModuleInput, RunIdInput));
        let cases: Vec<(Mutation, &str)> = vec![
            (|i| i.1.name = "vpc:operation:x".into(), "module.name"),
            (|i| i.1.name = "vpc*".into(), "module.name"),
            (|i| i.1.name = "v\u{0440}c".into(), "module.name"),
            (|i| i.1.name = "v\tc".into(), "module.name"),
            (|i| i.2.id = "run-KFg8DSiRz4E37mdJ".into(), "run.id"),
            (|i| i.2.phase = "apply".into(), "run.phase"),
            (|i| i.2.phase = "test".into(), "run.phase"),
            (|i| i.0.name = "ac:me".into(), "organization.name"),
        ];
        for (mutate, field) in cases {
            let mut bad = inputs();
            mutate(&mut bad);
            let error = ModuleTestContext::parse(&bad.0, &bad.1, &bad.2).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
    }
}
