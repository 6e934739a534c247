use super::*;
use crate::exchange::lookup::ca_value;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIUTqZ1Y8Vq1Zb3B0n1f0N0q2m9XkYwCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn plan_of(pairs: &[(&str, &str)], phase: RunPhase) -> Result<Plan, VariableError> {
    parse(&vars(pairs), phase, Duration::from_secs(60))
}

const BASE: &[(&str, &str)] = &[
    ("TFC_VAULT_PROVIDER_AUTH", "true"),
    ("TFC_VAULT_ADDR", "https://vault.internal:8200"),
    ("TFC_VAULT_RUN_ROLE", "tfe-acme-prod"),
];

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = BASE.to_vec();
    for (k, v) in extra {
        all.retain(|(key, _)| key != k);
        all.push((k, v));
    }
    all
}

#[test]
fn the_default_configuration_with_its_defaults() {
    let plan = plan_of(
        &with(&[("UNRELATED", "x"), ("TFC_AWS_PROVIDER_AUTH", "true")]),
        RunPhase::Plan,
    )
    .unwrap();
    assert_eq!(plan.vault.len(), 1);
    let v = &plan.vault[0];
    assert_eq!(v.name, ConfigName::Default);
    assert_eq!(v.endpoint.address, "https://vault.internal:8200");
    assert_eq!(
        (v.auth_path.as_str(), v.role.as_str()),
        ("jwt", "tfe-acme-prod")
    );
    assert_eq!(v.audience.as_str(), DEFAULT_AUDIENCE);
    assert_eq!(v.endpoint.timeout, Duration::from_secs(60));
    assert_eq!(
        (v.endpoint.namespace.as_ref(), v.endpoint.ca_pem.as_ref()),
        (None, None)
    );
    assert!(plan.backed.is_empty());
}

#[test]
fn plan_and_apply_roles_fall_back_to_run() {
    let set = with(&[("TFC_VAULT_PLAN_ROLE", "p")]);
    assert_eq!(plan_of(&set, RunPhase::Plan).unwrap().vault[0].role, "p");
    assert_eq!(
        plan_of(&set, RunPhase::Apply).unwrap().vault[0].role,
        "tfe-acme-prod"
    );
    let only_phases = [
        ("TFC_VAULT_PROVIDER_AUTH", "true"),
        ("TFC_VAULT_ADDR", "http://127.0.0.1:8200/"),
        ("TFC_VAULT_PLAN_ROLE", "p"),
        ("TFC_VAULT_APPLY_ROLE", "a"),
    ];
    assert_eq!(
        plan_of(&only_phases, RunPhase::Apply).unwrap().vault[0].role,
        "a"
    );
    assert_eq!(
        plan_of(&only_phases, RunPhase::Apply).unwrap().vault[0]
            .endpoint
            .address,
        "http://127.0.0.1:8200"
    );
}

#[test]
fn a_tag_takes_its_own_values_then_the_defaults() {
    let set = with(&[
        ("TFC_VAULT_PROVIDER_AUTH_TEAM_B", "true"),
        ("TFC_VAULT_ADDR_TEAM_B", "https://other:8200"),
        ("TFC_DEFAULT_VAULT_RUN_ROLE", "shared"),
        ("TFC_DEFAULT_VAULT_NAMESPACE", "admin/team"),
        ("TFC_DEFAULT_VAULT_AUTH_PATH", "jwt-tfe"),
        ("TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE_TEAM_B", "b.audience"),
        ("TFC_VAULT_CLIENT_TIMEOUT_TEAM_B", "5"),
    ]);
    let plan = plan_of(&set, RunPhase::Plan).unwrap();
    let b = plan
        .vault
        .iter()
        .find(|v| v.name.as_str() == "TEAM_B")
        .unwrap();
    assert_eq!(b.endpoint.address, "https://other:8200");
    assert_eq!(b.role, "shared");
    assert_eq!(b.endpoint.namespace.as_deref(), Some("admin/team"));
    assert_eq!(b.auth_path, "jwt-tfe");
    assert_eq!(b.audience.as_str(), "b.audience");
    assert_eq!(b.endpoint.timeout, Duration::from_secs(5));
    let d = plan
        .vault
        .iter()
        .find(|v| v.name == ConfigName::Default)
        .unwrap();
    assert_eq!(
        d.role, "tfe-acme-prod",
        "the default's own RUN_ROLE wins over TFC_DEFAULT_"
    );
    assert_eq!(d.endpoint.namespace.as_deref(), Some("admin/team"));
}

#[test]
fn disabled_configurations_are_not_read() {
    let set = with(&[
        ("TFC_VAULT_PROVIDER_AUTH_X", "false"),
        ("TFC_VAULT_ADDR_X", "nonsense"),
    ]);
    assert_eq!(plan_of(&set, RunPhase::Plan).unwrap().vault.len(), 1);
}

#[test]
fn the_engines_read_the_paths_their_types_serve() {
    let set = with(&[
        ("TFC_VAULT_BACKED_AWS_AUTH", "true"),
        ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "assumed_role"),
        ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "deploy"),
        (
            "TFC_VAULT_BACKED_AWS_APPLY_ROLE_ARN",
            "arn:aws:iam::123456789012:role/apply",
        ),
        ("TFC_VAULT_BACKED_AWS_SLEEP_SECONDS", "20"),
        ("TFC_VAULT_BACKED_AWS_AUTH_IAM", "true"),
        ("TFC_VAULT_BACKED_AWS_AUTH_TYPE_IAM", "iam_user"),
        ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE_IAM", "user"),
        ("TFC_VAULT_BACKED_AWS_MOUNT_PATH_IAM", "aws-east"),
        ("TFC_VAULT_BACKED_GCP_AUTH", "true"),
        (
            "TFC_VAULT_BACKED_GCP_AUTH_TYPE",
            "static_account/service_account_key",
        ),
        ("TFC_VAULT_BACKED_GCP_RUN_VAULT_STATIC_ACCOUNT", "sa"),
        ("TFC_VAULT_BACKED_AZURE_AUTH", "true"),
        ("TFC_VAULT_BACKED_AZURE_RUN_VAULT_ROLE", "contrib"),
    ]);
    let plan = plan_of(&set, RunPhase::Apply).unwrap();
    let read = |engine: Engine, name: &str| {
        let b = plan
            .backed
            .iter()
            .find(|b| b.engine == engine && b.name.as_str() == name)
            .unwrap();
        (b.path.clone(), b.query.clone(), b.shape, b.sleep_seconds)
    };
    assert_eq!(
        read(Engine::Aws, "default"),
        (
            "aws/sts/deploy".into(),
            vec![("role_arn", "arn:aws:iam::123456789012:role/apply".into())],
            Shape::AwsKeys,
            20
        )
    );
    assert_eq!(
        read(Engine::Aws, "IAM"),
        ("aws-east/creds/user".into(), vec![], Shape::AwsKeys, 0)
    );
    assert_eq!(read(Engine::Gcp, "default").0, "gcp/static-account/sa/key");
    assert_eq!(read(Engine::Gcp, "default").2, Shape::GcpKey);
    assert_eq!(
        read(Engine::Azure, "default"),
        ("azure/creds/contrib".into(), vec![], Shape::AzureClient, 0)
    );
    assert!(plan.backed.iter().all(|b| b.vault == ConfigName::Default));
}

#[test]
fn gcp_rolesets_and_the_vault_config_switch() {
    let set = with(&[
        ("TFC_VAULT_PROVIDER_AUTH_SEC", "true"),
        ("TFC_VAULT_ADDR_SEC", "https://sec:8200"),
        ("TFC_VAULT_RUN_ROLE_SEC", "sec"),
        ("TFC_VAULT_BACKED_GCP_AUTH", "true"),
        ("TFC_VAULT_BACKED_GCP_AUTH_TYPE", "roleset/access_token"),
        ("TFC_VAULT_BACKED_GCP_PLAN_VAULT_ROLESET", "viewer"),
        ("TFC_VAULT_BACKED_GCP_VAULT_CONFIG", "SEC"),
        ("TFC_VAULT_BACKED_GCP_MOUNT_PATH", "gcp/prod"),
        ("TFC_VAULT_BACKED_AWS_AUTH", "true"),
        ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "federation_token"),
        ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "fed"),
        (
            "TFC_VAULT_BACKED_AWS_RUN_ROLE_ARN",
            "arn:aws:iam::1:role/ignored",
        ),
    ]);
    let plan = plan_of(&set, RunPhase::Plan).unwrap();
    let gcp = plan
        .backed
        .iter()
        .find(|b| b.engine == Engine::Gcp)
        .unwrap();
    assert_eq!(gcp.path, "gcp/prod/roleset/viewer/token");
    assert_eq!(gcp.vault, ConfigName::Tag("SEC".into()));
    let aws = plan
        .backed
        .iter()
        .find(|b| b.engine == Engine::Aws)
        .unwrap();
    assert_eq!((aws.path.as_str(), aws.query.len()), ("aws/sts/fed", 0));
}

/// A variable set, the variable the error must name, and a part of its message.
type Case = (
    Vec<(&'static str, &'static str)>,
    &'static str,
    &'static str,
);

/// Each set is wrong in one way; the error names the variable at fault.
#[test]
fn malformed_variable_sets_name_the_variable() {
    let cases: Vec<Case> = vec![
        (vec![], "TFC_VAULT_PROVIDER_AUTH", "no Vault configuration"),
        (
            with(&[("TFC_VAULT_PROVIDER_AUTH", "yes")]),
            "TFC_VAULT_PROVIDER_AUTH",
            "\"yes\" is not a switch",
        ),
        (
            with(&[("TFC_DEFAULT_VAULT_PROVIDER_AUTH", "true")]),
            "TFC_DEFAULT_VAULT_PROVIDER_AUTH",
            "no TFC_DEFAULT_ form",
        ),
        (
            with(&[("TFC_DEFAULT_VAULT_BACKED_AWS_AUTH", "true")]),
            "TFC_DEFAULT_VAULT_BACKED_AWS_AUTH",
            "no TFC_DEFAULT_ form",
        ),
        (
            with(&[("TFC_VAULT_PROVIDER_AUTH_TYPE", "true")]),
            "TFC_VAULT_PROVIDER_AUTH_TYPE",
            "reserved",
        ),
        (
            with(&[("TFC_VAULT_PROVIDER_AUTH_my-tag", "true")]),
            "TFC_VAULT_PROVIDER_AUTH_my-tag",
            "not a tag",
        ),
        (
            with(&[("TFC_VAULT_PROVIDER_AUTH_", "true")]),
            "TFC_VAULT_PROVIDER_AUTH_",
            "empty",
        ),
        (
            with(&[("TFC_VAULT_ADDR", "vault.internal:8200")]),
            "TFC_VAULT_ADDR",
            "not a Vault address",
        ),
        (
            with(&[("TFC_VAULT_ADDR", "https://vault/v1")]),
            "TFC_VAULT_ADDR",
            "not a Vault address",
        ),
        (
            with(&[("TFC_VAULT_ADDR", "ftp://vault")]),
            "TFC_VAULT_ADDR",
            "not a Vault address",
        ),
        (
            vec![
                ("TFC_VAULT_PROVIDER_AUTH", "true"),
                ("TFC_VAULT_RUN_ROLE", "r"),
            ],
            "TFC_VAULT_ADDR",
            "is required",
        ),
        (
            vec![
                ("TFC_VAULT_PROVIDER_AUTH", "true"),
                ("TFC_VAULT_ADDR", "http://v"),
                ("TFC_VAULT_APPLY_ROLE", "a"),
            ],
            "TFC_VAULT_RUN_ROLE",
            "TFC_VAULT_PLAN_ROLE for a plan run",
        ),
        (
            with(&[("TFC_VAULT_RUN_ROLE", "a/b")]),
            "TFC_VAULT_RUN_ROLE",
            "not a name",
        ),
        (
            with(&[("TFC_VAULT_RUN_ROLE", "..")]),
            "TFC_VAULT_RUN_ROLE",
            "not a name",
        ),
        (
            with(&[("TFC_VAULT_AUTH_PATH", "/jwt/")]),
            "TFC_VAULT_AUTH_PATH",
            "not a path",
        ),
        (
            with(&[("TFC_VAULT_NAMESPACE", "admin/../root")]),
            "TFC_VAULT_NAMESPACE",
            "not a path",
        ),
        (
            with(&[("TFC_VAULT_CLIENT_TIMEOUT", "0")]),
            "TFC_VAULT_CLIENT_TIMEOUT",
            "from 1 to 600",
        ),
        (
            with(&[("TFC_VAULT_CLIENT_TIMEOUT", "30s")]),
            "TFC_VAULT_CLIENT_TIMEOUT",
            "from 1 to 600",
        ),
        (
            with(&[("TFC_VAULT_ENCODED_CACERT", "%%%")]),
            "TFC_VAULT_ENCODED_CACERT",
            "not base64",
        ),
        (
            with(&[("TFC_VAULT_ENCODED_CACERT", "aGVsbG8=")]),
            "TFC_VAULT_ENCODED_CACERT",
            "no usable CA",
        ),
        (
            with(&[("TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE", "two words")]),
            "TFC_VAULT_WORKLOAD_IDENTITY_AUDIENCE",
            "whitespace",
        ),
        (
            with(&[
                ("TFC_VAULT_BACKED_AWS_AUTH", "true"),
                ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "r"),
            ]),
            "TFC_VAULT_BACKED_AWS_AUTH_TYPE",
            "iam_user, assumed_role, federation_token",
        ),
        (
            with(&[
                ("TFC_VAULT_BACKED_AWS_AUTH", "true"),
                ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "sts"),
                ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "r"),
            ]),
            "TFC_VAULT_BACKED_AWS_AUTH_TYPE",
            "\"sts\" is not supported",
        ),
        (
            with(&[
                ("TFC_VAULT_BACKED_AWS_AUTH", "true"),
                ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "iam_user"),
            ]),
            "TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE",
            "is required",
        ),
        (
            with(&[
                ("TFC_VAULT_BACKED_AWS_AUTH", "true"),
                ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "iam_user"),
                ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "r"),
                ("TFC_VAULT_BACKED_AWS_SLEEP_SECONDS", "1501"),
            ]),
            "TFC_VAULT_BACKED_AWS_SLEEP_SECONDS",
            "from 0 to 1500",
        ),
        (
            with(&[
                ("TFC_VAULT_BACKED_AWS_AUTH", "true"),
                ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "assumed_role"),
                ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "r"),
                ("TFC_VAULT_BACKED_AWS_RUN_ROLE_ARN", "role/x"),
            ]),
            "TFC_VAULT_BACKED_AWS_RUN_ROLE_ARN",
            "not a role ARN",
        ),
        (
            with(&[
                ("TFC_VAULT_BACKED_AWS_AUTH", "true"),
                ("TFC_VAULT_BACKED_AWS_AUTH_TYPE", "iam_user"),
                ("TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE", "r"),
                ("TFC_VAULT_BACKED_AWS_VAULT_CONFIG", "NOPE"),
            ]),
            "TFC_VAULT_BACKED_AWS_VAULT_CONFIG",
            "names no enabled Vault configuration",
        ),
        (
            with(&[
                ("TFC_VAULT_PROVIDER_AUTH", "false"),
                ("TFC_VAULT_PROVIDER_AUTH_A", "true"),
                ("TFC_VAULT_ADDR_A", "http://a"),
                ("TFC_VAULT_RUN_ROLE_A", "r"),
                ("TFC_VAULT_BACKED_AZURE_AUTH", "true"),
                ("TFC_VAULT_BACKED_AZURE_RUN_VAULT_ROLE", "r"),
            ]),
            "TFC_VAULT_BACKED_AZURE_VAULT_CONFIG",
            "configuration for Vault authentication is required",
        ),
        (
            with(&[
                ("TFC_VAULT_BACKED_GCP_AUTH", "true"),
                (
                    "TFC_VAULT_BACKED_GCP_AUTH_TYPE",
                    "impersonated_account/access_token",
                ),
            ]),
            "TFC_VAULT_BACKED_GCP_AUTH_TYPE",
            "is not supported",
        ),
        (
            with(&[
                ("TFC_VAULT_BACKED_GCP_AUTH", "true"),
                ("TFC_VAULT_BACKED_GCP_AUTH_TYPE", "roleset/access_token"),
                ("TFC_VAULT_BACKED_GCP_RUN_VAULT_STATIC_ACCOUNT", "sa"),
            ]),
            "TFC_VAULT_BACKED_GCP_RUN_VAULT_ROLESET",
            "is required",
        ),
        (
            with(&[
                ("TFC_VAULT_BACKED_AZURE_AUTH", "true"),
                ("TFC_VAULT_BACKED_AZURE_RUN_VAULT_ROLE", "r"),
                ("TFC_VAULT_BACKED_AZURE_MOUNT_PATH", "azure//x"),
            ]),
            "TFC_VAULT_BACKED_AZURE_MOUNT_PATH",
            "not a path",
        ),
        (
            with(&[
                ("TFC_VAULT_BACKED_AZURE_AUTH_X", "true"),
                ("TFC_VAULT_BACKED_AZURE_RUN_VAULT_ROLE_X", "r"),
                ("TFC_VAULT_BACKED_AZURE_SLEEP_SECONDS_X", "-1"),
            ]),
            "TFC_VAULT_BACKED_AZURE_SLEEP_SECONDS_X",
            "from 0 to 1500",
        ),
        (
            with(&[
                ("TFC_VAULT_PROVIDER_AUTH_B", "true"),
                ("TFC_VAULT_RUN_ROLE_B", "r"),
            ]),
            "TFC_VAULT_ADDR_B",
            "is required",
        ),
    ];
    assert!(cases.len() >= 20);
    for (set, variable, message) in cases {
        let e = plan_of(&set, RunPhase::Plan).expect_err(&format!("{set:?} was accepted"));
        assert_eq!(e.variable, variable, "{set:?}: {e}");
        assert!(e.message.contains(message), "{set:?}: {e}");
    }
}

#[test]
fn an_encoded_ca_is_decoded_to_pem() {
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = rcgen::CertificateParams::new(vec!["vault".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    let encoded = STANDARD.encode(&pem);
    let found = Found {
        variable: "TFC_VAULT_ENCODED_CACERT",
        value: &encoded,
    };
    assert_eq!(ca_value(found).unwrap(), pem.as_bytes());
    let garbage = STANDARD.encode(CA_PEM);
    let found = Found {
        variable: "TFC_VAULT_ENCODED_CACERT",
        value: &garbage,
    };
    assert!(
        ca_value(found).is_err(),
        "a PEM block that is not a certificate must not pass"
    );
}

#[test]
fn long_values_are_cut_in_messages() {
    let long = "x".repeat(500);
    let set = with(&[("TFC_VAULT_ADDR", long.as_str())]);
    let e = plan_of(&set, RunPhase::Plan).unwrap_err();
    assert!(e.message.len() < 200, "{e}");
}
