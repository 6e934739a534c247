//! The key lifecycle's invariant across crashes: real `tfe-oidc` processes killed with SIGKILL at
//! random instants, on a real key directory.
//!
//! > at every instant and across restarts and crashes: every unexpired token that was handed out
//! > has its kid in the JWKS served; no token is signed by a key that was not already in the
//! > JWKS served.
//!
//! After every kill the store must load (for a reader and for a writer), hold exactly one current
//! and one next key, be either the set from before or the set one rotation later (never a mix,
//! never a lost key), and every token handed out so far must verify, with an independent verifier
//! (`jsonwebtoken`), against the JWKS a server would serve from it. Delays come from a seeded PRNG;
//! the seed is printed (`INVARIANT_TEST_SEED` replays the choices, not the kernel's timing).

use crate::common;
use crate::invariant;

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use invariant::{Minted, Rng, kids, parse_jwks, seed, verify};
use tfe_oidc::discovery::{Documents, JwkSet};
use tfe_oidc::keys::store::{KeyStore, read_unlocked};
use tfe_oidc::keys::{KeySet, KeyState};

const AUDIENCE: &str = "vault.workload.identity";
/// The default issuer, which `token issue` uses with no `issuer` configured.
const CLI_ISSUER: &str = "http://127.0.0.1:8443";

/// A child process that is killed and reaped however the test ends.
struct Guard(Option<Child>);

impl Guard {
    fn spawn(command: &mut Command) -> Guard {
        Guard(Some(command.spawn().expect("tfe-oidc starts")))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("a live child")
    }

    fn running(&mut self) -> bool {
        self.child().try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL (`Child::kill`), then reap.
    fn kill(&mut self) -> ExitStatus {
        let mut child = self.0.take().expect("a live child");
        let _ = child.kill();
        child.wait().expect("wait")
    }

    fn output(&mut self) -> Output {
        self.0
            .take()
            .expect("a live child")
            .wait_with_output()
            .expect("output")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `tfe-oidc <args>` with no `TFE_OIDC_*` variables from the test's environment.
fn tfe_oidc(args: &[&str]) -> Command {
    let mut command = Command::new(common::binary());
    command.args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TFE_OIDC_") {
            command.env_remove(name);
        }
    }
    command
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn issue_args(config: &Path, ttl_secs: u64) -> Vec<String> {
    ["token", "issue", "--config", config.to_str().unwrap()]
        .into_iter()
        .chain(common::RUN_FLAGS.iter().copied())
        .chain(["--phase", "apply", "--ttl"])
        .map(String::from)
        .chain([format!("{ttl_secs}s")])
        .collect()
}

fn issue_command(config: &Path, ttl_secs: u64) -> Command {
    let args = issue_args(config, ttl_secs);
    let mut command = tfe_oidc(&args.iter().map(String::as_str).collect::<Vec<_>>());
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

fn minted_from(output: &Output) -> Minted {
    assert!(
        output.status.success(),
        "token issue failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Minted::parse(String::from_utf8(output.stdout.clone()).unwrap().trim())
}

/// What a server would serve for `set`, parsed back from the bytes.
fn served_jwks(set: &KeySet) -> JwkSet {
    parse_jwks(&Documents::render(CLI_ISSUER, set).jwks.body)
}

fn one_current_one_next(set: &KeySet, context: &str) {
    let count = |s| set.keys.iter().filter(|k| k.state == s).count();
    assert_eq!(
        (count(KeyState::Current), count(KeyState::Next)),
        (1, 1),
        "{context}: {set:?}"
    );
}

/// Whether `after` is `before` rotated once (`Some(true)`), `before` itself (`Some(false)`), or
/// neither (`None`: a mix or a loss).
fn rotated_once(before: &KeySet, after: &KeySet) -> Option<bool> {
    if after == before {
        return Some(false);
    }
    let (old_current, old_next) = (before.current()?, before.next()?);
    let (new_current, new_next) = (after.current()?, after.next()?);
    let retired = after.get(&old_current.kid)?;
    let ok = new_current.kid == old_next.kid
        && new_current.created_at == old_next.created_at
        && retired.state == KeyState::Retired
        && retired.retired_at.is_some()
        && retired.verify_until.is_some()
        && !before.contains(&new_next.kid)
        && after.keys.len() == before.keys.len() + 1
        && before
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Retired)
            .all(|k| after.get(&k.kid) == Some(k));
    ok.then_some(true)
}

/// The files of the key directory that are neither the manifest nor a needed private key.
fn leftovers(dir: &Path, set: &KeySet) -> Vec<String> {
    let needed: HashSet<String> = set
        .keys
        .iter()
        .filter(|k| k.state != KeyState::Retired)
        .map(|k| format!("{}.pem", k.kid))
        .collect();
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") || (name.ends_with(".pem") && !needed.contains(&name)) {
            out.push(name);
        }
    }
    out
}

#[test]
fn rotations_killed_at_random_instants_leave_the_old_or_the_new_set_and_every_token_verifies() {
    let seed = seed("killed rotations");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let config = dir.path().join("config.toml");
    fs::write(
        &config,
        format!("[tokens]\nmax_ttl = \"24h\"\n[keys]\ndir = {keys:?}\n"),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let rotate = |force: bool| {
        let mut args = vec!["keys", "rotate", "--config", config_arg];
        if force {
            args.push("--force");
        }
        let mut command = tfe_oidc(&args);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    };

    // The first start makes current and next together; let it finish, then time a rotation.
    assert!(rotate(true).status().unwrap().success());
    let started = Instant::now();
    assert!(rotate(true).status().unwrap().success());
    let rotation = started.elapsed();
    // Where kills land: most near `boundary`, an estimate of the instant a rotation commits (new
    // key file, manifest written, renamed, old private key deleted), the rest anywhere in the
    // run. The estimate moves later after a kill that came before the commit and earlier after
    // one that came after it, so it follows the commit as the machine's load changes.
    let mut boundary = rotation.as_micros() as u64;
    eprintln!("an uninterrupted rotation takes {rotation:?}");

    // At least 32 kills; more (up to 96) while the kills have not yet landed on both sides of the
    // commit: on a loaded machine a rotation's length varies with the RSA key generation and the
    // other tests, so the estimate can take a while to find the commit.
    let (least, most) = (32, 96);
    let mut iterations = 0;
    let mut tokens: Vec<Minted> = Vec::new();
    let (mut mid_run, mut rotations, mut cleaned, mut concurrent) = (0, 0, 0, 0);
    let (mut cut_short, mut committed_then_killed, mut exited) = (0, 0, 0);
    while iterations < least || (iterations < most && (cut_short < 5 || rotations < 5)) {
        let i = iterations;
        iterations += 1;
        let ctx = format!("seed {seed} iteration {i}");
        let before = read_unlocked(&keys).expect("the store reads").set;
        one_current_one_next(&before, &ctx);
        for _ in 0..rng.range(1, 2) {
            let output = issue_command(&config, rng.range(300, 86_400))
                .output()
                .unwrap();
            let minted = minted_from(&output);
            assert_eq!(minted.kid, before.current().unwrap().kid.as_str(), "{ctx}");
            tokens.push(minted);
        }

        let force = !rng.percent(15);
        let mut child = Guard::spawn(&mut rotate(force));
        // Sometimes a reader mints while the writer runs: `token issue` never needs the lock.
        let mut reader = rng
            .percent(30)
            .then(|| Guard::spawn(&mut issue_command(&config, rng.range(300, 86_400))));
        let delay = if rng.percent(70) {
            boundary * rng.range(85, 115) / 100
        } else {
            rng.range(0, boundary * 13 / 10)
        };
        std::thread::sleep(Duration::from_micros(delay));
        let was_running = child.running();
        let status = child.kill();
        let killed = status.signal() == Some(9);
        mid_run += usize::from(was_running && killed);

        // What the kill left, seen by a reader before any writer tidies up.
        let left = leftovers(&keys, &before);
        let after = read_unlocked(&keys)
            .unwrap_or_else(|e| panic!("{ctx}: the store does not read after a kill: {e}"));
        one_current_one_next(&after.set, &ctx);
        let changed = rotated_once(&before, &after.set).unwrap_or_else(|| {
            panic!(
                "{ctx}: neither the old set nor the old set rotated once:\nbefore {before:?}\nafter {:?}",
                after.set
            )
        });
        rotations += usize::from(changed);
        match (killed, changed) {
            (true, false) => cut_short += 1,
            (true, true) => committed_then_killed += 1,
            (false, _) => exited += 1,
        }
        if force {
            boundary = match killed && !changed {
                true => boundary * 21 / 20,
                false => boundary * 19 / 20,
            };
        }
        if !killed {
            match force {
                true => assert!(status.success() && changed, "{ctx}: {status}"),
                false => assert!(
                    status.code() == Some(1) && !changed,
                    "{ctx}: an unforced rotation of a brand-new next key is refused: {status}"
                ),
            }
        }
        if let Some(mut reader) = reader.take() {
            let minted = minted_from(&reader.output());
            assert!(
                after
                    .set
                    .contains(&tfe_oidc::keys::Kid::parse(&minted.kid).unwrap()),
                "{ctx}: a token minted during the rotation is signed by {}",
                minted.kid
            );
            tokens.push(minted);
            concurrent += 1;
        }

        // `keys list` reads it too.
        let list = tfe_oidc(&["keys", "list", "--format", "json", "--config", config_arg])
            .output()
            .unwrap();
        assert!(
            list.status.success(),
            "{ctx}: keys list: {}",
            String::from_utf8_lossy(&list.stderr)
        );
        let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        let listed_kids: HashSet<&str> = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        let set_kids: HashSet<&str> = after.set.keys.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(listed_kids, set_kids, "{ctx}");

        // A writer opens it, finishing what the crash cut short.
        {
            let mut store = common::reopen_store(&keys);
            let loaded = store.load().expect("a writer loads it");
            assert_eq!(loaded.set, after.set, "{ctx}");
            let remaining = leftovers(&keys, &loaded.set);
            assert!(
                remaining.is_empty(),
                "{ctx}: left after open: {remaining:?}"
            );
            cleaned += usize::from(!left.is_empty());
            for key in &loaded.set.keys {
                let pem = keys.join(format!("{}.pem", key.kid));
                if key.state == KeyState::Retired {
                    assert!(
                        !pem.exists(),
                        "{ctx}: a retired key's private part survives"
                    );
                } else {
                    let mode = fs::metadata(&pem).unwrap().permissions().mode();
                    assert_eq!(mode & 0o777, 0o600, "{ctx}: {}", pem.display());
                }
            }
        }

        // Every token handed out so far is unexpired and verifies against what would be served.
        let jwks = served_jwks(&after.set);
        let now = unix_now();
        for token in &tokens {
            assert!(token.exp > now);
            verify(&token.token, &jwks, Some(CLI_ISSUER), AUDIENCE)
                .unwrap_or_else(|e| panic!("{ctx}: a token handed out before the kill: {e}"));
        }
    }
    eprintln!(
        "killed rotations: {iterations} kills ({mid_run} while running: {cut_short} before the commit, {committed_then_killed} after it; {exited} after exit; commit estimated at {boundary}µs), {rotations} rotations committed, {cleaned} times leftovers cleaned on open, {} tokens ({concurrent} minted during a rotation)",
        tokens.len()
    );
    assert!(
        cut_short >= 5 && rotations >= 5,
        "the kills did not straddle the commit: {cut_short} cut short, {rotations} committed"
    );
}

// ---- serve ----

/// A `serve` process on a fixed configuration file, its log appended to `log`.
fn spawn_serve(config: &Path, log: &Path) -> Guard {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = tfe_oidc(&["serve", "--config", config.to_str().unwrap()]);
    command
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file));
    Guard::spawn(&mut command)
}

async fn wait_ready(client: &reqwest::Client, issuer: &str, serve: &mut Guard, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = client.get(format!("{issuer}/healthz")).send().await
            && response.status() == 200
        {
            return;
        }
        if !serve.running() || Instant::now() > deadline {
            panic!(
                "serve did not become ready:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fetch_jwks(client: &reqwest::Client, issuer: &str) -> Option<JwkSet> {
    let response = client
        .get(format!("{issuer}/.well-known/jwks"))
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    Some(parse_jwks(&response.bytes().await.ok()?))
}

#[derive(Default)]
struct Observed {
    /// Tokens handed out (a 200 answer was received).
    tokens: Vec<Minted>,
    /// Every kid seen in a JWKS fetched from a server.
    published: HashSet<String>,
    violations: Vec<String>,
    fetches: usize,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_at_random_instants_serves_every_token_it_handed_out_after_restart() {
    common::init_crypto();
    let seed = seed("killed servers");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let api_tokens = common::write_tokens_file(dir.path());
    let (dport, aport) = (common::free_port(), common::free_port());
    let issuer = format!("http://127.0.0.1:{dport}");
    let config = dir.path().join("config.toml");
    fs::File::create(&config)
        .unwrap()
        .write_all(
            format!(
                "issuer = {issuer:?}\n\
                 [discovery]\nlisten = \"127.0.0.1:{dport}\"\njwks_max_age = \"1s\"\n\
                 [api]\nlisten = \"127.0.0.1:{aport}\"\ntokens_file = {:?}\n\
                 [tokens]\ndefault_ttl = \"10m\"\nmax_ttl = \"1h\"\n\
                 [keys]\ndir = {:?}\nrotation_period = \"4s\"\n",
                dir.path().join("api-tokens"),
                dir.path().join("keys"),
            )
            .as_bytes(),
        )
        .unwrap();
    let log = dir.path().join("serve.log");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let observed = Arc::new(Mutex::new(Observed::default()));
    let stop = Arc::new(AtomicBool::new(false));

    // Mints over the API without pause; every kid that signs must have been seen in a JWKS
    // fetched before the request was sent.
    let minter = {
        let (client, observed, stop) = (client.clone(), Arc::clone(&observed), Arc::clone(&stop));
        let url = format!("http://127.0.0.1:{aport}/v1/tokens");
        let bearer = api_tokens.all.clone();
        let mut rng = Rng::new(seed ^ 0x5eed);
        async move {
            while !stop.load(Ordering::SeqCst) {
                let published_before = observed.lock().unwrap().published.clone();
                let mut body = common::run_body("acme", "prod", "plan");
                body["ttl"] = format!("{}s", rng.range(60, 3600)).into();
                let answer = client
                    .post(&url)
                    .bearer_auth(&bearer)
                    .json(&body)
                    .send()
                    .await;
                let token = match answer {
                    Ok(r) if r.status() == 200 => r.json::<serde_json::Value>().await.ok(),
                    _ => None,
                };
                let Some(token) = token.and_then(|t| t["token"].as_str().map(String::from)) else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let minted = Minted::parse(&token);
                {
                    let mut observed = observed.lock().unwrap();
                    if !published_before.contains(&minted.kid) {
                        observed.violations.push(format!(
                            "a token was signed by {}, which no JWKS fetched before showed",
                            minted.kid
                        ));
                    }
                    observed.tokens.push(minted);
                }
                tokio::time::sleep(Duration::from_millis(rng.range(5, 40))).await;
            }
        }
    };
    // Fetches the JWKS without pause; every token handed out before a fetch must have its kid in it.
    let poller = {
        let (client, observed, stop) = (client.clone(), Arc::clone(&observed), Arc::clone(&stop));
        let issuer = issuer.clone();
        async move {
            while !stop.load(Ordering::SeqCst) {
                let handed_out: Vec<String> = {
                    let o = observed.lock().unwrap();
                    o.tokens.iter().map(|t| t.kid.clone()).collect()
                };
                if let Some(jwks) = fetch_jwks(&client, &issuer).await {
                    let served = kids(&jwks);
                    let mut o = observed.lock().unwrap();
                    o.fetches += 1;
                    for kid in handed_out.iter().filter(|k| !served.contains(*k)) {
                        o.violations
                            .push(format!("the JWKS served lacks {kid}, which signed a token"));
                    }
                    o.published.extend(served);
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    };

    let kills = 10;
    let mut pending = Some((minter, poller));
    let mut tasks = Vec::new();
    let mut restarted_checks = 0;
    for cycle in 0..=kills {
        let mut serve = spawn_serve(&config, &log);
        wait_ready(&client, &issuer, &mut serve, &log).await;
        let jwks = fetch_jwks(&client, &issuer)
            .await
            .expect("the JWKS is served");
        // Every token handed out by the servers killed so far verifies against this one's JWKS.
        let handed_out = {
            let mut o = observed.lock().unwrap();
            o.published.extend(kids(&jwks));
            o.tokens.clone()
        };
        let now = unix_now();
        for token in &handed_out {
            assert!(token.exp > now);
            verify(&token.token, &jwks, Some(&issuer), AUDIENCE).unwrap_or_else(|e| {
                panic!("seed {seed} cycle {cycle}: a token handed out before the kill: {e}")
            });
            restarted_checks += 1;
        }
        if let Some((minter, poller)) = pending.take() {
            // Only now: the first JWKS was fetched, so the first current key counts as seen.
            tasks.push(tokio::spawn(minter));
            tasks.push(tokio::spawn(poller));
        }
        if cycle == kills {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(0, 3000))).await;
        let status = serve.kill();
        assert_eq!(status.signal(), Some(9), "serve was running until killed");
    }
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let observed = observed.lock().unwrap();
    let signers: HashSet<&str> = observed.tokens.iter().map(|t| t.kid.as_str()).collect();
    eprintln!(
        "killed servers: {kills} kills, {} tokens from {} signing keys, {} JWKS fetches, {restarted_checks} verifications after restarts",
        observed.tokens.len(),
        signers.len(),
        observed.fetches
    );
    assert!(
        observed.violations.is_empty(),
        "seed {seed}: {:#?}",
        observed.violations
    );
    assert!(observed.tokens.len() >= 20, "too few tokens minted");
    assert!(signers.len() >= 2, "no rotation happened while minting");
}
