//! The operator's files in `deploy/`: the example configurations load, the systemd unit passes
//! `systemd-analyze verify` and keeps its keys where the configuration says, the Kubernetes
//! manifests are well-formed YAML that agree with the configuration they carry, the TLS recipe
//! renews a certificate under the same CA, and the docs that repeat these files (the reference's
//! production example, the monitoring README, the package metadata, the README's list of what
//! the tests install) say what the files say. `scripts/test-systemd` and `scripts/test-image` run
//! the package and the image themselves.

use crate::common;

use std::net::SocketAddr;
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;
use tfe_oidc::config::Config;

use common::{binary, deploy_dir, make_certs, make_named_cert, require_tool};

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(path)).unwrap()
}

/// The TLS directory both configurations name.
const TLS_DIR: &str = "/etc/tfe-oidc/tls/";

/// Loads `text` with its TLS files (the only files loading reads) swapped for ones the recipe
/// makes now; `None` when openssl is missing and skipping is allowed.
fn load(text: &str, what: &str) -> Option<Config> {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "DNS:tfe-oidc.internal")?;
    make_named_cert(dir.path(), "DNS:tfe-oidc.internal", "api")?;
    let text = text.replace(TLS_DIR, &format!("{}/", dir.path().display()));
    Some(Config::from_parts(&text, &[], None).unwrap_or_else(|e| panic!("{what}: {e}")))
}

fn example_config() -> Option<Config> {
    load(&read("tfe-oidc.toml"), "deploy/tfe-oidc.toml")
}

/// A string value of a TOML document, by dotted path.
fn toml_str(text: &str, path: &str) -> String {
    let value: toml::Value = toml::from_str(text).unwrap();
    let found = path.split('.').fold(&value, |v, key| &v[key]);
    found.as_str().unwrap().to_owned()
}

#[test]
fn the_example_config_loads_and_check_config_only_misses_its_files() {
    let Some(config) = example_config() else {
        return;
    };
    assert_eq!(config.issuer, "https://tfe-oidc.internal:8443");
    assert_eq!(config.keys.dir, std::path::Path::new("/var/lib/tfe-oidc"));
    let output = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(deploy_dir().join("tfe-oidc.toml"))
        .env_remove("TFE_OIDC_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let problems: Vec<&str> = stderr
            .lines()
            .filter(|l| l.trim_start().starts_with("- "))
            .collect();
        assert!(!problems.is_empty(), "{stderr}");
        for problem in problems {
            assert!(
                problem.contains("No such file"),
                "not a missing file: {problem}"
            );
        }
    }
}

/// The unit as installed, but with `ExecStart` on the binary cargo built: `systemd-analyze
/// verify` refuses a unit whose executable does not exist, and `/usr/bin/tfe-oidc` may not exist
/// here. It exits 0 even on unknown keys, so its output must be empty too.
#[test]
fn the_systemd_unit_verifies_and_sandboxes_the_key_directory() {
    let Some(analyze) = require_tool("systemd-analyze") else {
        return;
    };
    let unit = read("systemd/tfe-oidc.service");
    for line in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "User=tfe-oidc",
        "StateDirectory=tfe-oidc",
        "ExecStart=/usr/bin/tfe-oidc serve --config /etc/tfe-oidc/tfe-oidc.toml",
        // Not /bin/kill, which a minimal Debian lacks.
        "ExecReload=/bin/sh -c 'kill -HUP \"$$1\"' reload $MAINPID",
        "RestartPreventExitStatus=64",
        "ConfigurationDirectoryMode=0750",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    // RestartPreventExitStatus= covers only the main process: an ExecStartPre= that exits 64
    // would be restarted forever. `serve` checks the configuration itself.
    assert!(
        !unit.contains("\nExecStartPre="),
        "the unit has an ExecStartPre="
    );
    // keys.dir is the StateDirectory, and the audit file is in the LogsDirectory.
    let config = example_config().unwrap();
    assert_eq!(config.keys.dir, std::path::Path::new("/var/lib/tfe-oidc"));
    assert!(config.audit_path.unwrap().starts_with("/var/log/tfe-oidc"));
    assert!(unit.contains("LogsDirectory=tfe-oidc"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tfe-oidc.service");
    let built = binary();
    std::fs::write(
        &path,
        unit.replace("/usr/bin/tfe-oidc", built.to_str().unwrap()),
    )
    .unwrap();
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "systemd-analyze verify: {text}");
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify warned: {text}"
    );
}

/// Every document of the multi-document manifest file, as JSON values.
fn manifests() -> Vec<Value> {
    let text = read("kubernetes/tfe-oidc.yaml");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn port(addr: SocketAddr) -> Value {
    Value::from(addr.port())
}

#[test]
fn the_kubernetes_manifests_agree_with_the_config_they_carry() {
    let docs = manifests();
    for doc in &docs {
        assert_eq!(doc["metadata"]["namespace"], "tfe-oidc", "{doc}");
    }
    let toml = kind(&docs, "ConfigMap", "tfe-oidc-config")["data"]["tfe-oidc.toml"]
        .as_str()
        .unwrap();
    let Some(config) = load(toml, "ConfigMap tfe-oidc-config") else {
        return;
    };
    let (discovery, api) = (config.discovery.listen, config.api.listen);
    assert!(
        config.discovery.tls.as_ref().unwrap().client_ca.is_none(),
        "Vault cannot present a client certificate"
    );

    // The container exposes both listeners under their names.
    let deployment = kind(&docs, "Deployment", "tfe-oidc");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let named = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .clone()
    };
    assert_eq!(named("discovery"), port(discovery));
    assert_eq!(named("api"), port(api));
    assert_eq!(
        deployment["spec"]["replicas"], 1,
        "one server holds the key store"
    );
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");

    // Each Service fronts one listener; the discovery Service is the issuer's host and port.
    let service_port = |name: &str| kind(&docs, "Service", name)["spec"]["ports"][0].clone();
    let d = service_port("tfe-oidc-discovery");
    assert_eq!(
        (&d["targetPort"], &d["port"]),
        (&Value::from("discovery"), &port(discovery))
    );
    assert_eq!(
        config.issuer,
        format!("https://tfe-oidc-discovery.tfe-oidc.svc:{}", d["port"])
    );
    let a = service_port("tfe-oidc-api");
    assert_eq!(
        (&a["targetPort"], &a["port"]),
        (&Value::from("api"), &port(api))
    );

    // The mounts hold what the config names: the config file, TLS files, tokens file, keys.
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    let args = container["args"].as_array().unwrap();
    let config_path = args.last().unwrap().as_str().unwrap();
    for path in [
        config_path.to_owned(),
        toml_str(toml, "discovery.tls_cert"),
        toml_str(toml, "discovery.tls_key"),
        toml_str(toml, "api.tls_cert"),
        toml_str(toml, "api.tokens_file"),
        format!("{}/keys.json", config.keys.dir.display()),
    ] {
        let path = std::path::Path::new(&path);
        assert!(
            mounts.iter().any(|m| path.starts_with(m)),
            "{} is on no mounted volume",
            path.display()
        );
    }

    // Only Vault's pods reach the discovery port, only TFE's the API.
    let policy = kind(&docs, "NetworkPolicy", "tfe-oidc-ingress");
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let rule = |port_name: &str| {
        let rules: Vec<&Value> = rules
            .iter()
            .filter(|r| {
                r["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["port"] == port_name)
            })
            .collect();
        assert_eq!(rules.len(), 1, "exactly one rule opens {port_name}");
        assert_eq!(rules[0]["ports"].as_array().unwrap().len(), 1);
        rules[0]["from"].as_array().unwrap().clone()
    };
    let from = rule("discovery");
    assert_eq!(from.len(), 1);
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "vault"
    );
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "vault"
    );
    // The API: TFE's pods, the runners (the credential exchange) and Prometheus (/metrics).
    let from: Vec<(String, String)> = rule("api")
        .iter()
        .map(|f| {
            let label = |v: &Value| v.as_str().unwrap().to_owned();
            (
                label(&f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]),
                label(&f["podSelector"]["matchLabels"]["app.kubernetes.io/name"]),
            )
        })
        .collect();
    let expected = [
        ("tfe", "terraform-enterprise"),
        ("tfe-agents", "tfe-agent"),
        ("monitoring", "prometheus"),
    ]
    .map(|(n, p)| (n.to_owned(), p.to_owned()));
    assert_eq!(from, expected);
    assert_eq!(rules.len(), 2, "no other way in");

    // The exchange is on, for the cluster's Vault; the image is the one build-image.sh makes.
    assert_eq!(
        config.exchange.allowed_vault_addrs,
        ["https://vault.vault.svc:8200"]
    );
    assert_eq!(
        container["image"],
        format!("localhost/tfe-oidc:{}", env!("CARGO_PKG_VERSION"))
    );
    let build = read("container/build-image.sh");
    assert!(build.contains("TAG=${TAG:-localhost/tfe-oidc:$VERSION}"));
    // The image runs what the Deployment runs, as the user the pod's securityContext names, with
    // the key volume where the manifest mounts it.
    let containerfile = read("container/Containerfile");
    let cmd = containerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(cmd).unwrap(),
        container["args"]
    );
    let user = &pod["securityContext"];
    assert!(containerfile.contains(&format!(
        "USER {}:{}",
        user["runAsUser"], user["runAsGroup"]
    )));
    assert!(containerfile.contains("VOLUME /var/lib/tfe-oidc"));
}

#[test]
fn the_tls_recipe_renews_the_server_certificate_under_the_same_ca() {
    let dir = tempfile::tempdir().unwrap();
    let Some(()) = make_certs(dir.path(), "DNS:tfe-oidc.internal,IP:10.231.7.10") else {
        return;
    };
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let (ca, server) = (read("ca.pem"), read("server.pem"));
    make_certs(dir.path(), "DNS:tfe-oidc.internal,IP:10.231.7.10").unwrap();
    assert_eq!(
        read("ca.pem"),
        ca,
        "renewing must keep Vault's oidc_discovery_ca_pem valid"
    );
    assert_ne!(read("server.pem"), server);
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .arg("-in")
        .arg(dir.path().join("server.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("DNS:tfe-oidc.internal, IP Address:10.231.7.10"),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("server-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// The production example serves the API to other hosts (runners, Prometheus) over TLS with the
/// recipe's named certificate and an allow list, and turns the credential exchange on.
#[test]
fn the_example_config_serves_runners_and_prometheus_and_enables_the_exchange() {
    let Some(config) = example_config() else {
        return;
    };
    assert_eq!(
        config.exchange.allowed_vault_addrs,
        ["https://vault.internal:8200"]
    );
    assert!(!config.api.listen.ip().is_loopback());
    let tls = config
        .api
        .tls
        .as_ref()
        .expect("an API off loopback has TLS");
    // The recipe's `NAME=api` certificate (its directory is swapped for the test's by `load`).
    assert!(tls.cert.ends_with("api.pem") && tls.key.ends_with("api-key.pem"));
    assert!(!config.api.allow.is_empty());
    let (discovery, api) = (config.discovery.tls.unwrap(), config.api.tls.unwrap());
    assert!(discovery.client_ca.is_none() && api.client_ca.is_none());
}

/// The leaves of a TOML table, as `(dotted.key, value)`.
fn leaves(prefix: &str, value: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&path, value, out);
            }
        }
        leaf => out.push((prefix.to_owned(), leaf.clone())),
    }
}

/// docs/reference.md's production example is deploy/tfe-oidc.toml without its comments: every
/// value it sets is the file's, and neither sets `discovery.client_ca`, which Vault cannot meet.
#[test]
fn the_reference_production_example_is_the_deploy_example() {
    let reference = std::fs::read_to_string(deploy_dir().join("../docs/reference.md")).unwrap();
    let section = &reference[reference.find("### 2.4 A production example").unwrap()..];
    let block = section.split("```toml\n").nth(1).unwrap();
    let example = &block[..block.find("```").unwrap()];
    let deploy: toml::Value = toml::from_str(&read("tfe-oidc.toml")).unwrap();
    let mut found = Vec::new();
    leaves("", &toml::from_str(example).unwrap(), &mut found);
    assert!(found.len() > 10, "{found:?}");
    for (key, value) in found {
        let theirs = key.split('.').try_fold(&deploy, |v, k| v.get(k));
        assert_eq!(theirs, Some(&value), "docs/reference.md 2.4 sets {key}");
    }
    assert!(!example.contains("client_ca ="));
    let Some(config) = load(example, "docs/reference.md 2.4") else {
        return;
    };
    assert!(config.discovery.tls.unwrap().client_ca.is_none());
}

/// deploy/monitoring/README.md scrapes and probes the API of the example configuration, by the
/// file name the package and the unit use.
#[test]
fn the_monitoring_readme_matches_the_example_config() {
    let Some(config) = example_config() else {
        return;
    };
    let readme = read("monitoring/README.md");
    assert!(!readme.contains("config.toml"));
    for line in readme.lines().filter(|l| l.contains("--config /")) {
        assert!(
            line.contains("--config /etc/tfe-oidc/tfe-oidc.toml"),
            "{line}"
        );
    }
    let issuer = config.issuer.to_string();
    let host = issuer
        .trim_start_matches("https://")
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let api = format!("{host}:{}", config.api.listen.port());
    assert!(readme.contains(&format!("- targets: ['{api}']")), "{api}");
    assert!(readme.contains("scheme: https"), "the API has TLS");
    for (at, _) in readme.match_indices("curl ") {
        let line = readme[at..].lines().next().unwrap();
        if line.contains(":8080") || line.contains("/metrics") || line.contains("/readyz") {
            assert!(line.contains(&format!("https://{api}/")), "{line}");
        }
    }
    // The unit and the package read the same file.
    let unit = read("systemd/tfe-oidc.service");
    assert!(unit.contains("--config /etc/tfe-oidc/tfe-oidc.toml"));
}

/// The Debian package's configuration loads (only the files an operator adds are missing), keeps
/// keys and audit where the unit's directories are, and the package metadata installs it.
#[test]
fn the_packaged_config_fits_the_unit_and_the_package() {
    let text = read("debian/tfe-oidc.toml");
    let Some(config) = load(&text, "deploy/debian/tfe-oidc.toml") else {
        return;
    };
    assert_eq!(config.keys.dir, std::path::Path::new("/var/lib/tfe-oidc"));
    assert!(config.audit_path.unwrap().starts_with("/var/log/tfe-oidc"));
    assert_eq!(
        config.tokens_file.as_deref(),
        Some(std::path::Path::new("/etc/tfe-oidc/api-tokens"))
    );
    // The lines scripts/test-systemd uncomments, as an operator would.
    for line in [
        "# issuer = ",
        "# tls_cert = ",
        "# tls_key = ",
        "# allowed_vault_addrs = ",
    ] {
        assert!(text.lines().any(|l| l.starts_with(line)), "{line}");
    }
    let cargo = std::fs::read_to_string(deploy_dir().join("../Cargo.toml")).unwrap();
    let cargo: toml::Value = toml::from_str(&cargo).unwrap();
    let deb = &cargo["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().unwrap();
    let installs = |from: &str, to: &str| {
        assets
            .iter()
            .any(|a| a[0].as_str() == Some(from) && a[1].as_str() == Some(to))
    };
    assert!(installs(
        "deploy/debian/tfe-oidc.toml",
        "etc/tfe-oidc/tfe-oidc.toml"
    ));
    assert!(installs("target/release/tfe-oidc", "usr/bin/"));
    assert_eq!(
        deb["conf-files"][0].as_str(),
        Some("/etc/tfe-oidc/tfe-oidc.toml")
    );
    assert_eq!(
        deb["systemd-units"]["unit-scripts"].as_str(),
        Some("deploy/systemd/")
    );
    for file in ["tfe-oidc.service", "tfe-oidc.sysusers", "tfe-oidc.tmpfile"] {
        assert!(deploy_dir().join("systemd").join(file).is_file(), "{file}");
    }
}

/// Every Debian package and tool scripts/test installs is named in the README's account of what
/// the tests install.
#[test]
fn the_readme_names_everything_scripts_test_installs() {
    let script = std::fs::read_to_string(deploy_dir().join("../scripts/test")).unwrap();
    let readme = std::fs::read_to_string(deploy_dir().join("../README.md")).unwrap();
    let intro = &readme[..readme.find("## What it is").unwrap()];
    let list = script
        .lines()
        .find_map(|l| l.strip_prefix("DEBIAN_TOOLS=("))
        .and_then(|l| l.strip_suffix(')'))
        .expect("scripts/test has a DEBIAN_TOOLS=(tool:package ...) line");
    let mut packages: Vec<&str> = list
        .split_whitespace()
        .map(|pair| pair.split_once(':').unwrap().1)
        .collect();
    packages.extend(["prometheus", "cargo-deb"]);
    assert!(packages.len() >= 8, "{packages:?}");
    for package in packages {
        assert!(
            intro.contains(&format!("`{package}`")),
            "README does not name `{package}`"
        );
    }
}
