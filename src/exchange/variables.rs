//! A workspace's `TFC_VAULT_*` variables as typed configurations: the Vault logins and the
//! AWS, GCP and Azure secrets-engine reads, with TFE's rules (`lookup.rs` holds the forms).
//! Every other variable is ignored. Nothing here touches the network.

use std::collections::BTreeMap;
use std::time::Duration;

use super::lookup::{
    ConfigName, Found, VariableError, Variables, address_value, ca_value, choice_value, name_value,
    path_value, role_arn_value, seconds_value, shown,
};
use crate::token::claims::{Audience, RunPhase};
use crate::vault::Endpoint;

/// The audience of a Vault login token when `TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE` is unset.
pub const DEFAULT_AUDIENCE: &str = "vault.workload.identity";
/// The largest `*_SLEEP_SECONDS` TFE accepts (25 minutes).
pub const MAX_SLEEP_SECONDS: u64 = 1500;
/// The largest `TFC_VAULT_CLIENT_TIMEOUT`.
pub const MAX_CLIENT_TIMEOUT: u64 = 600;

/// One Vault login.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    pub name: ConfigName,
    /// Where, with the namespace, CA and `CLIENT_TIMEOUT`.
    pub endpoint: Endpoint,
    /// The variable the address came from, for the allowlist's 403.
    pub address_variable: String,
    pub auth_path: String,
    pub role: String,
    pub audience: Audience,
    pub audience_variable: String,
}

/// A Vault-backed secrets engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Aws,
    Gcp,
    Azure,
}

impl Engine {
    /// The step name in errors and metrics, and the key of the response section.
    pub fn step(self) -> &'static str {
        match self {
            Engine::Aws => "aws",
            Engine::Gcp => "gcp",
            Engine::Azure => "azure",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Engine::Aws => "TFC_VAULT_BACKED_AWS",
            Engine::Gcp => "TFC_VAULT_BACKED_GCP",
            Engine::Azure => "TFC_VAULT_BACKED_AZURE",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Engine::Aws => "AWS",
            Engine::Gcp => "GCP",
            Engine::Azure => "Azure",
        }
    }
}

/// What a read returns, and so how it is shaped into the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `access_key`, `secret_key`, `session_token`/`security_token`.
    AwsKeys,
    /// `token`, `expires_at_seconds`.
    GcpToken,
    /// `private_key_data`: base64 of a service account key file.
    GcpKey,
    /// `client_id`, `client_secret`.
    AzureClient,
}

/// One secrets-engine read with the token of a Vault login.
#[derive(Debug, Clone)]
pub struct BackedConfig {
    pub engine: Engine,
    pub name: ConfigName,
    /// The Vault configuration whose token reads.
    pub vault: ConfigName,
    /// `<mount>/…`, without `/v1/`.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub shape: Shape,
    pub sleep_seconds: u64,
}

/// A manual workload identity token: `TFC_WORKLOAD_IDENTITY_AUDIENCE[_<TAG>]` asks for one,
/// returned as `TFC_WORKLOAD_IDENTITY_TOKEN[_<TAG>]`.
#[derive(Debug, Clone)]
pub struct ManualToken {
    pub name: ConfigName,
    pub audience: Audience,
    /// The variable the audience came from, for the allowlist's 400.
    pub variable: String,
}

impl ManualToken {
    /// The name of the environment variable that carries the token.
    pub fn env_name(&self) -> String {
        format!("{MANUAL_TOKEN}{}", self.name.suffix())
    }
}

/// The manual audience variable and the token variable it yields.
pub const MANUAL_AUDIENCE: &str = "TFC_WORKLOAD_IDENTITY_AUDIENCE";
pub const MANUAL_TOKEN: &str = "TFC_WORKLOAD_IDENTITY_TOKEN";

/// Everything one exchange does, decided before any call.
#[derive(Debug, Clone)]
pub struct Plan {
    pub vault: Vec<VaultConfig>,
    pub backed: Vec<BackedConfig>,
    pub manual: Vec<ManualToken>,
}

/// Reads `variables` for a run in `phase`; `default_timeout` is `exchange.vault_timeout`.
pub fn parse(
    variables: &BTreeMap<String, String>,
    phase: RunPhase,
    default_timeout: Duration,
) -> Result<Plan, VariableError> {
    let vars = Variables::new(variables, phase);
    let vault = vars
        .enabled("TFC_VAULT_PROVIDER_AUTH", None)?
        .into_iter()
        .map(|name| vault_config(&vars, name, default_timeout))
        .collect::<Result<Vec<_>, _>>()?;
    let mut backed = Vec::new();
    for engine in [Engine::Aws, Engine::Gcp, Engine::Azure] {
        let enable = format!("{}_AUTH", engine.prefix());
        for name in vars.enabled(&enable, Some("TYPE"))? {
            backed.push(backed_config(&vars, engine, name, &vault)?);
        }
    }
    let manual = manual_tokens(&vars)?;
    if vault.is_empty() && manual.is_empty() {
        return Err(VariableError::new(
            "TFC_VAULT_PROVIDER_AUTH",
            "no Vault configuration is enabled: set TFC_VAULT_PROVIDER_AUTH (or TFC_VAULT_PROVIDER_AUTH_<TAG>) to \"true\"",
        ));
    }
    Ok(Plan {
        vault,
        backed,
        manual,
    })
}

/// `TFC_WORKLOAD_IDENTITY_AUDIENCE[_<TAG>]`: one token per variable, for its audience.
fn manual_tokens(vars: &Variables<'_>) -> Result<Vec<ManualToken>, VariableError> {
    let mut tokens = Vec::new();
    for (name, found) in vars.tagged(MANUAL_AUDIENCE)? {
        let audience = Audience::parse(found.value).map_err(|m| {
            VariableError::new(found.variable, format!("{}: {m}", shown(found.value)))
        })?;
        tokens.push(ManualToken {
            name,
            audience,
            variable: found.variable.to_owned(),
        });
    }
    Ok(tokens)
}

fn vault_config(
    vars: &Variables<'_>,
    name: ConfigName,
    default_timeout: Duration,
) -> Result<VaultConfig, VariableError> {
    let addr = vars.get("TFC_VAULT_ADDR", &name).ok_or_else(|| {
        required(
            "TFC_VAULT_ADDR",
            &name,
            "the Vault address, e.g. https://vault.internal:8200",
        )
    })?;
    let role = name_value(vars.phased_required("TFC_VAULT", "ROLE", &name)?)?;
    let timeout = match vars.get("TFC_VAULT_CLIENT_TIMEOUT", &name) {
        Some(found) => Duration::from_secs(seconds_value(found, 1, MAX_CLIENT_TIMEOUT)?),
        None => default_timeout,
    };
    let (audience, audience_variable) = audience(vars, &name)?;
    Ok(VaultConfig {
        endpoint: Endpoint {
            address: address_value(addr)?,
            namespace: optional(vars, "TFC_VAULT_NAMESPACE", &name, path_value)?,
            ca_pem: optional(vars, "TFC_VAULT_ENCODED_CACERT", &name, ca_value)?,
            timeout,
        },
        address_variable: addr.variable.to_owned(),
        auth_path: optional(vars, "TFC_VAULT_AUTH_PATH", &name, path_value)?
            .unwrap_or_else(|| "jwt".into()),
        role,
        audience,
        audience_variable,
        name,
    })
}

fn audience(vars: &Variables<'_>, name: &ConfigName) -> Result<(Audience, String), VariableError> {
    let var = "TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE";
    match vars.get(var, name) {
        None => Ok((
            Audience::parse(DEFAULT_AUDIENCE).expect("the default audience is valid"),
            format!("{var}{}", name.suffix()),
        )),
        Some(found) => Audience::parse(found.value)
            .map(|a| (a, found.variable.to_owned()))
            .map_err(|m| {
                VariableError::new(found.variable, format!("{}: {m}", shown(found.value)))
            }),
    }
}

fn optional<T>(
    vars: &Variables<'_>,
    var: &str,
    name: &ConfigName,
    rule: impl Fn(Found<'_>) -> Result<T, VariableError>,
) -> Result<Option<T>, VariableError> {
    vars.get(var, name).map(rule).transpose()
}

fn required(var: &str, name: &ConfigName, what: &str) -> VariableError {
    let variable = format!("{var}{}", name.suffix());
    VariableError::new(&variable, format!("is required: set it to {what}"))
}

fn backed_config(
    vars: &Variables<'_>,
    engine: Engine,
    name: ConfigName,
    vault: &[VaultConfig],
) -> Result<BackedConfig, VariableError> {
    let prefix = engine.prefix();
    let mount = optional(vars, &format!("{prefix}_MOUNT_PATH"), &name, path_value)?
        .unwrap_or_else(|| engine.step().into());
    let sleep_seconds = match engine {
        Engine::Gcp => 0,
        _ => optional(vars, &format!("{prefix}_SLEEP_SECONDS"), &name, |f| {
            seconds_value(f, 0, MAX_SLEEP_SECONDS)
        })?
        .unwrap_or(0),
    };
    let (path, query, shape) = match engine {
        Engine::Aws => aws_read(vars, &name, &mount)?,
        Engine::Gcp => gcp_read(vars, &name, &mount)?,
        Engine::Azure => {
            let role = name_value(vars.phased_required(prefix, "VAULT_ROLE", &name)?)?;
            (
                format!("{mount}/creds/{role}"),
                Vec::new(),
                Shape::AzureClient,
            )
        }
    };
    Ok(BackedConfig {
        engine,
        vault: vault_of(vars, engine, &name, vault)?,
        name,
        path,
        query,
        shape,
        sleep_seconds,
    })
}

type Read = (String, Vec<(&'static str, String)>, Shape);

fn auth_type<'c>(
    vars: &Variables<'_>,
    engine: Engine,
    name: &ConfigName,
    allowed: &[&'c str],
) -> Result<&'c str, VariableError> {
    let var = format!("{}_AUTH_TYPE", engine.prefix());
    let found = vars
        .get(&var, name)
        .ok_or_else(|| required(&var, name, &format!("one of {}", allowed.join(", "))))?;
    choice_value(found, allowed)
}

fn aws_read(vars: &Variables<'_>, name: &ConfigName, mount: &str) -> Result<Read, VariableError> {
    let kind = auth_type(
        vars,
        Engine::Aws,
        name,
        &["iam_user", "assumed_role", "federation_token"],
    )?;
    let prefix = Engine::Aws.prefix();
    let role = name_value(vars.phased_required(prefix, "VAULT_ROLE", name)?)?;
    let mut query = Vec::new();
    if kind == "assumed_role"
        && let Some(found) = vars.phased(prefix, "ROLE_ARN", name)
    {
        query.push(("role_arn", role_arn_value(found)?));
    }
    let path = match kind {
        "iam_user" => format!("{mount}/creds/{role}"),
        _ => format!("{mount}/sts/{role}"),
    };
    Ok((path, query, Shape::AwsKeys))
}

fn gcp_read(vars: &Variables<'_>, name: &ConfigName, mount: &str) -> Result<Read, VariableError> {
    let kinds = [
        "roleset/access_token",
        "roleset/service_account_key",
        "static_account/access_token",
        "static_account/service_account_key",
    ];
    let kind = auth_type(vars, Engine::Gcp, name, &kinds)?;
    let (family, credential) = kind.split_once('/').expect("every kind has a '/'");
    let (suffix, segment) = match family {
        "roleset" => ("VAULT_ROLESET", "roleset"),
        _ => ("VAULT_STATIC_ACCOUNT", "static-account"),
    };
    let target = name_value(vars.phased_required(Engine::Gcp.prefix(), suffix, name)?)?;
    let (leaf, shape) = match credential {
        "access_token" => ("token", Shape::GcpToken),
        _ => ("key", Shape::GcpKey),
    };
    Ok((
        format!("{mount}/{segment}/{target}/{leaf}"),
        Vec::new(),
        shape,
    ))
}

/// The Vault configuration `<prefix>_VAULT_CONFIG` names, else the default one.
fn vault_of(
    vars: &Variables<'_>,
    engine: Engine,
    name: &ConfigName,
    vault: &[VaultConfig],
) -> Result<ConfigName, VariableError> {
    let var = format!("{}_VAULT_CONFIG", engine.prefix());
    let (wanted, variable) = match vars.get(&var, name) {
        Some(found) => (
            ConfigName::Tag(found.value.to_owned()),
            found.variable.to_owned(),
        ),
        None => (ConfigName::Default, format!("{var}{}", name.suffix())),
    };
    if vault.iter().any(|v| v.name == wanted) {
        return Ok(wanted);
    }
    let enabled: Vec<&str> = vault.iter().map(|v| v.name.as_str()).collect();
    let label = engine.label();
    let message = match &wanted {
        ConfigName::Default => format!(
            "configuration for Vault authentication is required for Vault-backed {label} authentication: set TFC_VAULT_PROVIDER_AUTH=true, or set {variable} to the tag of an enabled Vault configuration"
        ),
        ConfigName::Tag(tag) => format!(
            "{} names no enabled Vault configuration: set TFC_VAULT_PROVIDER_AUTH_{tag}=true, or use one of: {}",
            shown(tag),
            enabled.join(", ")
        ),
    };
    Err(VariableError::new(&variable, message))
}

#[cfg(test)]
#[path = "variables_tests.rs"]
mod tests;
