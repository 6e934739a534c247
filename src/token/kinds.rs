//! The kinds of token TFE signs, and which one a request asks for.
//!
//! A `TokenInput` is every member a request may carry. `module` asks for a module-test token,
//! `stack` for a Stacks deployment token, neither for a workspace run token; a member of another
//! kind is refused by name rather than ignored. Each kind has its own context (validated
//! inputs), `sub`, claim set, `nbf` offset and TTL bounds; `Subject` holds one of them.

use serde::{Deserialize, Deserializer, Serialize};

use super::claims::{
    Audience, Claims, NamedInput, RUN_CLAIMS, RunContext, RunIdInput, RunInput, RunPhase,
};
use super::input::FieldError;
use super::module_test::{ModuleInput, ModuleTestClaims, ModuleTestContext};
use super::stack::{DeploymentInput, PlanInput, StackClaims, StackContext, StackError, StackInput};

/// Every claim name of every kind, for the discovery document's `claims_supported`: the
/// workspace run claims in TFE's order, then the Stacks claims runs do not have (a module test's
/// claims are all run claims).
pub fn claim_names() -> Vec<&'static str> {
    let mut names = RUN_CLAIMS.to_vec();
    for name in super::stack::CLAIMS
        .iter()
        .chain(super::module_test::CLAIMS)
    {
        if !names.contains(name) {
            names.push(name);
        }
    }
    names
}

/// Every member a `POST /v1/tokens` body (or `token issue`'s flags) may carry. A member is
/// absent or a value of its type: `null` is refused like any other wrong type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenInput {
    pub organization: NamedInput,
    #[serde(default, deserialize_with = "present")]
    pub project: Option<NamedInput>,
    #[serde(default, deserialize_with = "present")]
    pub workspace: Option<NamedInput>,
    #[serde(default, deserialize_with = "present")]
    pub run: Option<RunIdInput>,
    #[serde(default, deserialize_with = "present")]
    pub module: Option<ModuleInput>,
    #[serde(default, deserialize_with = "present")]
    pub stack: Option<NamedInput>,
    #[serde(default, deserialize_with = "present")]
    pub deployment: Option<DeploymentInput>,
    #[serde(default, deserialize_with = "present")]
    pub operation: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub plan: Option<PlanInput>,
    pub audience: Option<String>,
    pub ttl: Option<String>,
}

/// A member that is there: its value, never `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A request's inputs that are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// One member is at fault (missing, of another kind, or invalid).
    #[error(transparent)]
    Field(#[from] FieldError),
    /// Every member is valid, but a Stacks `sub` would exceed TFE's 127 characters.
    #[error(transparent)]
    Stack(#[from] StackError),
}

impl InputError {
    /// The JSON path of the member at fault, when one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            InputError::Field(e) | InputError::Stack(StackError::Field(e)) => Some(&e.field),
            InputError::Stack(StackError::SubjectTooLong(_)) => None,
        }
    }
}

/// The kind of a token; its label in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Run,
    ModuleTest,
    Stack,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Run, Kind::ModuleTest, Kind::Stack];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::ModuleTest => "module_test",
            Kind::Stack => "stack",
        }
    }

    /// How a request asks for this kind, for messages.
    fn selected_by(self) -> &'static str {
        match self {
            Kind::Run => "a request without module or stack asks for a workspace run token",
            Kind::ModuleTest => "module asks for a module test token",
            Kind::Stack => "stack asks for a Stacks deployment token",
        }
    }
}

/// Whom a token is for: one validated context of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Run(RunContext),
    ModuleTest(ModuleTestContext),
    Stack(StackContext),
}

impl From<RunContext> for Subject {
    fn from(run: RunContext) -> Subject {
        Subject::Run(run)
    }
}

impl Subject {
    /// The kind `input` asks for, with every member checked.
    pub fn parse(input: &TokenInput) -> Result<Subject, InputError> {
        match (&input.module, &input.stack) {
            (Some(_), Some(_)) => Err(foreign("stack", Kind::ModuleTest).into()),
            (Some(module), None) => module_test_subject(input, module),
            (None, Some(stack)) => stack_subject(input, stack),
            (None, None) => run_subject(input),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Subject::Run(_) => Kind::Run,
            Subject::ModuleTest(_) => Kind::ModuleTest,
            Subject::Stack(_) => Kind::Stack,
        }
    }

    /// The `sub` claim of this subject's token.
    pub fn sub(&self) -> String {
        match self {
            Subject::Run(c) => c.subject(),
            Subject::ModuleTest(c) => c.subject(),
            Subject::Stack(c) => c.subject(),
        }
    }

    /// The phase the token is for: a module test is always a plan; a Stacks operation is one.
    pub fn phase(&self) -> RunPhase {
        match self {
            Subject::Run(run) => run.phase,
            Subject::ModuleTest(_) => RunPhase::Plan,
            Subject::Stack(stack) => stack.operation,
        }
    }

    /// The claims of this kind's token.
    pub fn claims(
        &self,
        iss: &str,
        aud: &Audience,
        jti: String,
        iat: u64,
        exp: u64,
    ) -> TokenClaims {
        match self {
            Subject::Run(c) => TokenClaims::Run(Claims::new(c, iss, aud, jti, iat, exp)),
            Subject::ModuleTest(c) => {
                TokenClaims::ModuleTest(ModuleTestClaims::new(c, iss, aud, jti, iat, exp))
            }
            Subject::Stack(c) => TokenClaims::Stack(StackClaims::new(c, iss, aud, jti, iat, exp)),
        }
    }
}

fn run_subject(input: &TokenInput) -> Result<Subject, InputError> {
    refuse(input, Kind::Run, &["deployment", "operation", "plan"])?;
    let run = RunContext::parse(&RunInput {
        organization: input.organization.clone(),
        project: need(&input.project, "project", Kind::Run)?.clone(),
        workspace: need(&input.workspace, "workspace", Kind::Run)?.clone(),
        run: need(&input.run, "run", Kind::Run)?.clone(),
    })?;
    Ok(Subject::Run(run))
}

fn module_test_subject(input: &TokenInput, module: &ModuleInput) -> Result<Subject, InputError> {
    let kind = Kind::ModuleTest;
    refuse(
        input,
        kind,
        &["project", "workspace", "deployment", "operation", "plan"],
    )?;
    let run = need(&input.run, "run", kind)?;
    let test = ModuleTestContext::parse(&input.organization, module, run)?;
    Ok(Subject::ModuleTest(test))
}

fn stack_subject(input: &TokenInput, stack: &NamedInput) -> Result<Subject, InputError> {
    let kind = Kind::Stack;
    refuse(input, kind, &["workspace", "run"])?;
    let stack = StackContext::parse(&StackInput {
        organization: input.organization.clone(),
        project: need(&input.project, "project", kind)?.clone(),
        stack: stack.clone(),
        deployment: need(&input.deployment, "deployment", kind)?.clone(),
        operation: need(&input.operation, "operation", kind)?.clone(),
        plan: need(&input.plan, "plan", kind)?.clone(),
    })?;
    Ok(Subject::Stack(stack))
}

/// Refuses the first of `members` that `input` carries: it belongs to another kind.
fn refuse(input: &TokenInput, kind: Kind, members: &[&str]) -> Result<(), FieldError> {
    match members.iter().find(|m| input.has(m)) {
        Some(member) => Err(foreign(member, kind)),
        None => Ok(()),
    }
}

fn foreign(member: &str, kind: Kind) -> FieldError {
    FieldError::new(
        member,
        format!(
            "{member} has no place here: {}, which has no {member}; send the members of one token kind only",
            kind.selected_by()
        ),
    )
}

fn need<'a, T>(value: &'a Option<T>, member: &str, kind: Kind) -> Result<&'a T, FieldError> {
    value.as_ref().ok_or_else(|| {
        FieldError::new(
            member,
            format!(
                "missing field `{member}`: {}, which needs {member} {}",
                kind.selected_by(),
                shape(member)
            ),
        )
    })
}

fn shape(member: &str) -> &'static str {
    match member {
        "run" => "{\"id\", \"phase\"}",
        "deployment" => "{\"name\"}",
        "plan" => "{\"id\"}",
        "operation" => "(\"plan\" or \"apply\")",
        _ => "{\"id\", \"name\"}",
    }
}

impl TokenInput {
    /// Whether the member named `member` is present.
    fn has(&self, member: &str) -> bool {
        match member {
            "project" => self.project.is_some(),
            "workspace" => self.workspace.is_some(),
            "run" => self.run.is_some(),
            "deployment" => self.deployment.is_some(),
            "operation" => self.operation.is_some(),
            "plan" => self.plan.is_some(),
            _ => false,
        }
    }
}

/// The claims of one token, serialized as its kind's claim set and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TokenClaims {
    Run(Claims),
    ModuleTest(ModuleTestClaims),
    Stack(StackClaims),
}

impl TokenClaims {
    pub fn jti(&self) -> &str {
        match self {
            TokenClaims::Run(c) => &c.jti,
            TokenClaims::ModuleTest(c) => &c.jti,
            TokenClaims::Stack(c) => &c.jti,
        }
    }

    pub fn sub(&self) -> &str {
        match self {
            TokenClaims::Run(c) => &c.sub,
            TokenClaims::ModuleTest(c) => &c.sub,
            TokenClaims::Stack(c) => &c.sub,
        }
    }

    pub fn aud(&self) -> &str {
        match self {
            TokenClaims::Run(c) => &c.aud,
            TokenClaims::ModuleTest(c) => &c.aud,
            TokenClaims::Stack(c) => &c.aud,
        }
    }

    /// `iat` and `exp`.
    pub fn times(&self) -> (u64, u64) {
        match self {
            TokenClaims::Run(c) => (c.iat, c.exp),
            TokenClaims::ModuleTest(c) => (c.iat, c.exp),
            TokenClaims::Stack(c) => (c.iat, c.exp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> TokenInput {
        serde_json::from_str(json).unwrap()
    }

    const ORG: &str = r#""organization":{"id":"org-a","name":"acme"}"#;
    const RUN: &str = r#""project":{"id":"prj-a","name":"p"},"workspace":{"id":"ws-a","name":"w"},"run":{"id":"run-a","phase":"apply"}"#;
    const MODULE: &str = r#""module":{"name":"vpc"},"run":{"id":"trun-a","phase":"plan"}"#;
    const STACK: &str = r#""project":{"id":"prj-a","name":"p"},"stack":{"id":"st-a","name":"s"},"deployment":{"name":"d"},"operation":"plan","plan":{"id":"sp-a"}"#;

    fn parse(members: &str) -> Result<Subject, InputError> {
        Subject::parse(&input(&format!("{{{ORG},{members}}}")))
    }

    fn field_of(members: &str) -> String {
        parse(members).unwrap_err().field().unwrap().to_owned()
    }

    #[test]
    fn module_and_stack_select_the_kind() {
        assert_eq!(parse(RUN).unwrap().kind(), Kind::Run);
        assert_eq!(parse(MODULE).unwrap().kind(), Kind::ModuleTest);
        assert_eq!(parse(STACK).unwrap().kind(), Kind::Stack);
        assert_eq!(parse(MODULE).unwrap().phase(), RunPhase::Plan);
    }

    #[test]
    fn a_member_of_another_kind_is_refused_by_name() {
        let workspace = r#""workspace":{"id":"ws-a","name":"w"}"#;
        assert_eq!(field_of(&format!("{MODULE},{workspace}")), "workspace");
        assert_eq!(
            field_of(&format!(
                r#"{MODULE},"project":{{"id":"prj-a","name":"p"}}"#
            )),
            "project"
        );
        assert_eq!(
            field_of(&format!(r#"{MODULE},"stack":{{"id":"st-a","name":"s"}}"#)),
            "stack"
        );
        assert_eq!(field_of(&format!("{STACK},{workspace}")), "workspace");
        assert_eq!(
            field_of(&format!(r#"{STACK},"run":{{"id":"run-a","phase":"plan"}}"#)),
            "run"
        );
        assert_eq!(
            field_of(&format!(r#"{RUN},"operation":"plan""#)),
            "operation"
        );
        assert_eq!(
            field_of(&format!(r#"{RUN},"plan":{{"id":"sp-a"}}"#)),
            "plan"
        );
    }

    #[test]
    fn a_null_member_is_refused_not_taken_as_absent() {
        let body = format!(r#"{{{ORG},{MODULE},"workspace":null}}"#);
        assert!(serde_json::from_str::<TokenInput>(&body).is_err());
    }

    #[test]
    fn run_claims_serialize_as_before_the_kinds() {
        let Subject::Run(run) = parse(RUN).unwrap() else {
            panic!("a run")
        };
        let aud = Audience::parse("a").unwrap();
        let claims = Claims::new(&run, "https://x", &aud, "j".into(), 1000, 2000);
        assert_eq!(
            serde_json::to_string(&TokenClaims::Run(claims.clone())).unwrap(),
            serde_json::to_string(&claims).unwrap()
        );
    }

    #[test]
    fn a_missing_member_is_named_with_its_kind() {
        let error = parse(r#""module":{"name":"vpc"}"#).unwrap_err();
        assert_eq!(error.field(), Some("run"));
        assert!(error.to_string().contains("missing field"), "{error}");
        assert!(error.to_string().contains("module test"), "{error}");
        assert_eq!(
            field_of(r#""project":{"id":"prj-a","name":"p"},"stack":{"id":"st-a","name":"s"}"#),
            "deployment"
        );
        assert_eq!(
            field_of(r#""project":{"id":"prj-a","name":"p"}"#),
            "workspace"
        );
    }
}
