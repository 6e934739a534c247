//! COMMAND's environment: what of the exchange's answer may reach it, and what of `run`'s own
//! environment must not.
//!
//! - The answer's `env` may hold only the names the exchange documents (`ANSWER_NAMES` and
//!   `TFC_WORKLOAD_IDENTITY_TOKEN_<TAG>`), each with a string value, and every tag in the answer
//!   (the keys of `aliases`, which become file names) holds letters, digits and underscores only.
//!   Anything else (`LD_PRELOAD`, `PATH`, `BASH_ENV`, a tag with a `/`) refuses the whole answer.
//! - No `TFE_OIDC_RUN_*` variable reaches COMMAND: they are `run`'s own flags, one of them the
//!   credential's file. Nor do the variables with which a CI job asks its platform for a new
//!   identity token (GitHub Actions' `ACTIONS_ID_TOKEN_REQUEST_URL` and `_TOKEN`): with them,
//!   COMMAND could mint upstream tokens for tfe-oidc's audience for as long as the job runs.
//! - Every `VAULT_*` and `BAO_*` variable (token, address, namespace, CA, client certificate,
//!   TLS server name, skip-verify, agent and proxy addresses, token helper configuration, …) is
//!   removed except the few that only shape output and retries (`KEPT_CLI_SETTINGS`), and the
//!   run's own are set under both prefixes: Vault's CLI reads `VAULT_*`, OpenBao's reads `BAO_*`
//!   first and falls back to `VAULT_*`. So `vault` and `bao` inside COMMAND reach the run's Vault
//!   with the run's token, or no Vault at all when the run has no default Vault configuration.

use std::ffi::{OsStr, OsString};

use serde_json::Value;

/// The names of the exchange's `env` (reference §4.6), besides the tagged manual tokens.
const ANSWER_NAMES: [&str; 11] = [
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "VAULT_NAMESPACE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
    "GOOGLE_CREDENTIALS",
    "ARM_CLIENT_ID",
    "ARM_CLIENT_SECRET",
    "TFC_WORKLOAD_IDENTITY_TOKEN",
];

/// The answer sections whose `aliases` keys are tags.
const SECTIONS: [&str; 4] = ["vault", "aws", "gcp", "azure"];

/// `VAULT_<X>`/`BAO_<X>` settings that change neither where a CLI connects nor who it is.
const KEPT_CLI_SETTINGS: [&str; 4] = ["FORMAT", "CLI_NO_COLOR", "CLIENT_TIMEOUT", "MAX_RETRIES"];

/// Why the answer is refused, or nothing.
pub fn check_answer(answer: &Value) -> Result<(), String> {
    for (name, value) in answer["env"].as_object().into_iter().flatten() {
        if !allowed(name) {
            return Err(format!(
                "its env names {}, which is not a variable the exchange sets",
                shown(name)
            ));
        }
        if !value.is_string() {
            return Err(format!("its env value of {name} is not a string"));
        }
    }
    for section in SECTIONS {
        for tag in answer[section]["aliases"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(t, _)| t)
        {
            if !is_tag(tag) {
                return Err(format!(
                    "its {section} aliases hold {}, which is not a tag (letters, digits and underscores)",
                    shown(tag)
                ));
            }
        }
    }
    Ok(())
}

fn allowed(name: &str) -> bool {
    ANSWER_NAMES.contains(&name)
        || name
            .strip_prefix("TFC_WORKLOAD_IDENTITY_TOKEN_")
            .is_some_and(is_tag)
}

fn is_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A name from the answer, quoted and cut short: it may be anything.
fn shown(name: &str) -> String {
    let cut: String = name.chars().take(64).collect();
    format!("{cut:?}")
}

/// COMMAND's whole environment: `inherited` without `TFE_OIDC_RUN_*` and the Vault CLI
/// settings, then `set` (the answer's `env`, checked by `check_answer`, the `TF_VAR_`s and file
/// paths), its `VAULT_*` (address, token, namespace) and `vault_ca` (the default Vault
/// configuration's CA file, if any) each set under both `VAULT_` and `BAO_`.
pub fn for_command(
    inherited: impl Iterator<Item = (OsString, OsString)>,
    set: &[(String, String)],
    vault_ca: Option<&str>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = inherited.filter(|(k, _)| kept(k)).collect();
    let mut vault: Vec<(String, String)> = Vec::new();
    for (name, value) in set {
        match name.strip_prefix("VAULT_") {
            Some(setting) => vault.push((setting.to_owned(), value.clone())),
            None => env.push((name.into(), value.into())),
        }
    }
    let has_vault = vault.iter().any(|(s, _)| s == "ADDR");
    if let Some(ca) = vault_ca.filter(|_| has_vault) {
        vault.push(("CACERT".to_owned(), ca.to_owned()));
    }
    for (setting, value) in vault {
        for prefix in ["VAULT_", "BAO_"] {
            env.push((format!("{prefix}{setting}").into(), value.clone().into()));
        }
    }
    env
}

/// Whether an inherited variable may reach COMMAND (names compared as bytes: a name that is
/// not UTF-8 is judged by the same prefixes).
fn kept(name: &OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let name = name.as_bytes();
    if name.starts_with(b"TFE_OIDC_RUN_") || name.starts_with(b"ACTIONS_ID_TOKEN_REQUEST_") {
        return false;
    }
    match name
        .strip_prefix(b"VAULT_")
        .or_else(|| name.strip_prefix(b"BAO_"))
    {
        Some(setting) => KEPT_CLI_SETTINGS.iter().any(|k| k.as_bytes() == setting),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_documented_names_and_tags_pass() {
        let ok = json!({"env": {"VAULT_TOKEN": "t", "TFC_WORKLOAD_IDENTITY_TOKEN_AZ": "j"},
                        "vault": {"aliases": {"TEAM_B": {}}}});
        assert_eq!(check_answer(&ok), Ok(()));
        for (answer, needle) in [
            (
                json!({"env": {"LD_PRELOAD": "/tmp/x.so"}}),
                "\"LD_PRELOAD\"",
            ),
            (json!({"env": {"PATH": "/tmp"}}), "\"PATH\""),
            (json!({"env": {"BASH_ENV": "/tmp/x"}}), "\"BASH_ENV\""),
            (
                json!({"env": {"TFC_WORKLOAD_IDENTITY_TOKEN_a/b": "j"}}),
                "a/b",
            ),
            (json!({"env": {"VAULT_TOKEN": 1}}), "not a string"),
            (json!({"aws": {"aliases": {"../../x": {}}}}), "\"../../x\""),
        ] {
            let e = check_answer(&answer).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn command_gets_the_runs_vault_under_both_prefixes_and_no_run_flag() {
        let inherited = [
            ("PATH", "/bin"),
            ("TFE_OIDC_RUN_API_TOKEN_FILE", "/secret"),
            ("TFE_OIDC_RUN_API", "https://x"),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "gh-secret"),
            ("ACTIONS_ID_TOKEN_REQUEST_URL", "https://gh/id"),
            ("BAO_TOKEN", "root"),
            ("VAULT_SKIP_VERIFY", "true"),
            ("BAO_AGENT_ADDR", "http://agent"),
            ("VAULT_FORMAT", "json"),
            ("TFC_VAULT_ADDR", "https://v"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let set = [
            ("VAULT_ADDR".to_owned(), "https://v".to_owned()),
            ("VAULT_TOKEN".to_owned(), "s.run".to_owned()),
            ("TF_VAR_x".to_owned(), "{}".to_owned()),
        ];
        let env = for_command(inherited.into_iter(), &set, Some("/d/vault-ca.pem"));
        let mut names: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{}={}", k.to_str().unwrap(), v.to_str().unwrap()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "BAO_ADDR=https://v",
                "BAO_CACERT=/d/vault-ca.pem",
                "BAO_TOKEN=s.run",
                "PATH=/bin",
                "TFC_VAULT_ADDR=https://v",
                "TF_VAR_x={}",
                "VAULT_ADDR=https://v",
                "VAULT_CACERT=/d/vault-ca.pem",
                "VAULT_FORMAT=json",
                "VAULT_TOKEN=s.run",
            ]
        );
    }

    #[test]
    fn without_a_default_vault_no_vault_setting_is_left() {
        let inherited = [("BAO_TOKEN", "root"), ("VAULT_ADDR", "https://elsewhere")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = for_command(inherited.into_iter(), &[], Some("/d/ca"));
        assert!(env.is_empty(), "{env:?}");
    }
}
