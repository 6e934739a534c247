//! The private directory of one run and what goes in it: what TFE's agent writes for
//! Vault-backed dynamic credentials, and the environment that points at it.
//!
//! The directory is `$TMPDIR/tfe-oidc-run-<random>` (`/tmp` without `TMPDIR`; an empty or
//! relative `TMPDIR` is refused, since it would put the credentials under the working directory), made with `mkdir` (which fails when the
//! name exists) at mode 0700; each file is made with `O_CREAT|O_EXCL` at mode 0600. Files of the
//! default configuration are `<kind>`, those of a tagged one `<kind>.<TAG>` (a tag holds no `.`).
//!
//! - Vault: `vault-token[.<TAG>]` and, with a CA, `vault-ca.pem[.<TAG>]`;
//!   `TF_VAR_tfc_vault_dynamic_credentials` holds `token_filename`, `address`, `namespace`,
//!   `ca_cert_file`.
//! - AWS: `aws-credentials[.<TAG>]`, a shared-credentials file whose `[default]` profile is that
//!   configuration's keys; the default configuration's file also has one `[<TAG>]` profile per
//!   tagged configuration. `AWS_SHARED_CREDENTIALS_FILE` names it.
//! - GCP: `gcp-credentials.json[.<TAG>]` (a service account key: `credentials` is its path) or
//!   `gcp-access-token[.<TAG>]` (`access_token` is the token itself: the Google provider takes
//!   no file for it).
//! - Azure: `azure-client-id[.<TAG>]`, `azure-client-secret[.<TAG>]`, as
//!   `client_id_file_path` and `client_secret_file_path`.
//!
//! The exchange's `env` (the default configurations' `VAULT_*`, AWS, GCP and Azure variables and
//! the `TFC_WORKLOAD_IDENTITY_TOKEN*`), checked by `environ`, is passed on as it is.

use std::ffi::OsString;
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// `$TMPDIR/tfe-oidc-run-<random>`, removed with everything in it on drop.
pub struct PrivateDir {
    path: PathBuf,
}

/// Where the private directory goes: `TMPDIR` when it is absolute, `/tmp` when it is unset.
pub fn temp_base(tmpdir: Option<OsString>) -> Result<PathBuf, String> {
    match tmpdir {
        None => Ok(PathBuf::from("/tmp")),
        Some(dir) if Path::new(&dir).is_absolute() => Ok(PathBuf::from(dir)),
        Some(dir) => Err(format!(
            "TMPDIR {dir:?} is not an absolute path, and run writes the credential files under it: set it to an absolute directory such as /tmp, or unset it"
        )),
    }
}

impl PrivateDir {
    /// A new private directory under `base` (an absolute path).
    pub fn create(base: &Path) -> io::Result<PrivateDir> {
        let name = format!("tfe-oidc-run-{}", uuid::Uuid::new_v4().simple());
        let path = base.join(name);
        DirBuilder::new().mode(0o700).create(&path)?;
        Ok(PrivateDir { path })
    }

    /// Writes a new file `name` (mode 0600) and returns its path.
    fn write(&self, name: &str, contents: &[u8]) -> io::Result<PathBuf> {
        let path = self.path.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(contents)?;
        file.sync_all()?;
        Ok(path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            // Not eprintln!: after a SIGHUP the terminal may be gone, and a panic here would
            // skip the revocation.
            let _ = writeln!(
                io::stderr(),
                "tfe-oidc: cannot remove {}: {e}: delete it, it holds credentials",
                self.path.display()
            );
        }
    }
}

/// What COMMAND is given besides its inherited environment.
pub struct Written {
    /// The exchange's `env`, the `TF_VAR_`s and the file paths.
    pub env: Vec<(String, String)>,
    /// The default Vault configuration's CA file, when it has one.
    pub vault_ca: Option<String>,
}

/// Writes every credential file of `answer` into `dir`.
pub fn write_all(dir: &PrivateDir, answer: &Value) -> io::Result<Written> {
    let mut env: Vec<(String, String)> = answer["env"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect();
    let mut tf_var = |name: &str, value: Value| {
        env.push((format!("TF_VAR_{name}"), value.to_string()));
    };
    let vault_section = section(&answer["vault"], |n, e| vault(dir, n, e))?;
    let vault_ca = vault_section["default"]["ca_cert_file"]
        .as_str()
        .map(str::to_owned);
    tf_var("tfc_vault_dynamic_credentials", vault_section);
    let aws = section(&answer["aws"], |n, e| aws(dir, n, e, &answer["aws"]))?;
    let aws_file = aws["default"]["shared_credentials_file"].as_str();
    let aws_file = aws_file.map(|f| ("AWS_SHARED_CREDENTIALS_FILE".to_owned(), f.to_owned()));
    let present = |key: &str| answer.get(key).is_some_and(|v| !v.is_null());
    if present("aws") {
        tf_var("tfc_vault_backed_aws_dynamic_credentials", aws);
    }
    if present("gcp") {
        let gcp = section(&answer["gcp"], |n, e| gcp(dir, n, e))?;
        tf_var("tfc_vault_backed_gcp_dynamic_credentials", gcp);
    }
    if present("azure") {
        let azure = section(&answer["azure"], |n, e| azure(dir, n, e))?;
        tf_var("tfc_vault_backed_azure_dynamic_credentials", azure);
    }
    env.extend(aws_file);
    Ok(Written { env, vault_ca })
}

/// `{"default", "aliases"}` of a response section, each entry turned into its variable entry.
fn section(
    answer: &Value,
    mut entry: impl FnMut(Option<&str>, &Value) -> io::Result<Value>,
) -> io::Result<Value> {
    let default = match &answer["default"] {
        Value::Null => Value::Null,
        value => entry(None, value)?,
    };
    let mut aliases = Map::new();
    for (tag, value) in answer["aliases"].as_object().into_iter().flatten() {
        aliases.insert(tag.clone(), entry(Some(tag), value)?);
    }
    Ok(json!({"default": default, "aliases": aliases}))
}

/// `kind` for the default configuration, `kind.<TAG>` for a tagged one.
fn file_name(kind: &str, tag: Option<&str>) -> String {
    match tag {
        None => kind.to_owned(),
        Some(tag) => format!("{kind}.{tag}"),
    }
}

fn text<'v>(entry: &'v Value, key: &str) -> io::Result<&'v str> {
    entry[key].as_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the exchange's answer has no {key}"),
        )
    })
}

fn shown(path: &Path) -> Value {
    json!(path.to_string_lossy())
}

fn vault(dir: &PrivateDir, tag: Option<&str>, entry: &Value) -> io::Result<Value> {
    let token = dir.write(
        &file_name("vault-token", tag),
        text(entry, "token")?.as_bytes(),
    )?;
    let ca = match entry["ca_cert"].as_str() {
        Some(pem) => shown(&dir.write(&file_name("vault-ca.pem", tag), pem.as_bytes())?),
        None => Value::Null,
    };
    Ok(json!({
        "token_filename": shown(&token),
        "address": entry["address"],
        "namespace": entry["namespace"],
        "ca_cert_file": ca,
    }))
}

/// One shared-credentials profile.
fn aws_profile(profile: &str, entry: &Value) -> io::Result<String> {
    let mut out = format!(
        "[{profile}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        text(entry, "access_key_id")?,
        text(entry, "secret_access_key")?
    );
    if let Some(session) = entry["session_token"].as_str() {
        out.push_str(&format!("aws_session_token = {session}\n"));
    }
    Ok(out)
}

fn aws(dir: &PrivateDir, tag: Option<&str>, entry: &Value, all: &Value) -> io::Result<Value> {
    let mut contents = aws_profile("default", entry)?;
    if tag.is_none() {
        for (alias, value) in all["aliases"].as_object().into_iter().flatten() {
            contents.push('\n');
            contents.push_str(&aws_profile(alias, value)?);
        }
    }
    let path = dir.write(&file_name("aws-credentials", tag), contents.as_bytes())?;
    Ok(json!({"shared_credentials_file": shown(&path)}))
}

fn gcp(dir: &PrivateDir, tag: Option<&str>, entry: &Value) -> io::Result<Value> {
    if let Some(key) = entry["credentials"].as_str() {
        let path = dir.write(&file_name("gcp-credentials.json", tag), key.as_bytes())?;
        return Ok(json!({"credentials": shown(&path), "access_token": null}));
    }
    let token = text(entry, "access_token")?;
    dir.write(&file_name("gcp-access-token", tag), token.as_bytes())?;
    Ok(json!({"credentials": null, "access_token": token}))
}

fn azure(dir: &PrivateDir, tag: Option<&str>, entry: &Value) -> io::Result<Value> {
    let id = dir.write(
        &file_name("azure-client-id", tag),
        text(entry, "client_id")?.as_bytes(),
    )?;
    let secret = dir.write(
        &file_name("azure-client-secret", tag),
        text(entry, "client_secret")?.as_bytes(),
    )?;
    Ok(json!({
        "client_id_file_path": shown(&id),
        "client_secret_file_path": shown(&secret),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_private_and_gone_after_drop() {
        let dir = PrivateDir::create(&std::env::temp_dir()).unwrap();
        let answer = json!({
            "vault": {"default": {"address": "http://v:8200", "namespace": null, "token": "t1"},
                      "aliases": {"B": {"address": "http://v:8200", "namespace": "ns", "token": "t2", "ca_cert": "PEM"}}},
            "aws": {"default": {"access_key_id": "A", "secret_access_key": "S", "session_token": null},
                    "aliases": {"B": {"access_key_id": "A2", "secret_access_key": "S2", "session_token": "T2"}}},
            "env": {"VAULT_TOKEN": "t1"},
            "not_before": 0
        });
        let written = write_all(&dir, &answer).unwrap();
        assert!(
            written.vault_ca.is_none(),
            "the default configuration has no CA"
        );
        let env = written.env;
        let path = dir.path.clone();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let vault: Value =
            serde_json::from_str(&get("TF_VAR_tfc_vault_dynamic_credentials").unwrap()).unwrap();
        let b = vault["aliases"]["B"]["token_filename"].as_str().unwrap();
        assert_eq!(std::fs::read_to_string(b).unwrap(), "t2");
        assert_eq!(
            std::fs::metadata(b).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(vault["aliases"]["B"]["namespace"], "ns");
        let aws = std::fs::read_to_string(get("AWS_SHARED_CREDENTIALS_FILE").unwrap()).unwrap();
        assert!(
            aws.starts_with("[default]\naws_access_key_id = A\n"),
            "{aws}"
        );
        assert!(aws.contains(
            "[B]\naws_access_key_id = A2\naws_secret_access_key = S2\naws_session_token = T2\n"
        ));
        assert!(get("TF_VAR_tfc_vault_backed_gcp_dynamic_credentials").is_none());
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn tmpdir_must_be_absolute() {
        assert_eq!(temp_base(None).unwrap(), PathBuf::from("/tmp"));
        assert_eq!(
            temp_base(Some("/var/tmp".into())).unwrap(),
            PathBuf::from("/var/tmp")
        );
        for bad in ["", "tmp", "./tmp"] {
            let e = temp_base(Some(bad.into())).unwrap_err();
            assert!(e.contains("not an absolute path"), "{e}");
        }
    }
}
