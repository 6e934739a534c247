//! High availability on a real OpenBao Raft cluster: three nodes on disk (`common::raft`), three
//! `serve` replicas with `keys.store = "vault-transit"` naming every node, and their discovery
//! listeners behind HAProxy, health-checked on each replica's `/readyz`, whose address is the
//! issuer. OpenBao's JWT auth discovers the issuer through HAProxy.
//!
//! A continuous load mints tokens on every replica in turn and logs in to OpenBao with each,
//! while keys rotate every few seconds, through four faults in a row:
//! 1. the Raft leader SIGKILLed (during rotations), then restarted from its disk;
//! 2. every OpenBao node restarted in turn (a rolling upgrade), then every replica;
//! 3. one replica frozen (SIGSTOP) for longer than a rotation period, then resumed;
//! 4. quorum lost (two nodes down) for 30 s, then the last node down too, then all restored.
//!
//! What must hold: no login refused (none are attempted while quorum is lost); every token's key
//! was served through HAProxy before the token was asked for, and HAProxy never serves a JWKS
//! without the key of a token already handed out; no replica's own JWKS ever loses a key (every
//! key's tokens outlive the test, so none may leave); `/readyz` of every replica answers 503 once no
//! node answers; no transit version ever holds two keys, and the record's rotations are at least
//! one period apart. The figures are printed for `bench/README.md`.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::transit::kid_of;
use common::bao::VAULT_AUDIENCE;
use common::process::{Server, Setup, ports};
use common::raft::RaftCluster;
use common::{Process, free_port, require_tool, run_body, write_tokens_file};

const PERIOD_SECS: u64 = 4;
const ROLE: &str = "tfe";

/// What the load saw, shared with the checks.
#[derive(Default)]
struct Observed {
    /// Every kid HAProxy served, with when it was first seen.
    served: Mutex<BTreeMap<String, Instant>>,
    /// Kids of tokens handed out, with the tokens' expiry.
    handed_out: Mutex<BTreeMap<String, u64>>,
    /// Instants at which a token was signed.
    signed_at: Mutex<Vec<Instant>>,
    /// Problems found as they happened.
    violations: Mutex<Vec<String>>,
    logins: AtomicU64,
    refused: AtomicU64,
    tokens: AtomicU64,
    /// While set, no login is attempted (quorum is lost).
    no_quorum: AtomicBool,
    stop: AtomicBool,
}

impl Observed {
    fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.lock().unwrap().push(what);
    }
}

fn store_toml(addrs: &[String], token: &Path) -> String {
    format!(
        "store = \"vault-transit\"\nrotation_period = \"{PERIOD_SECS}s\"\n[keys.vault]\naddr = {addrs:?}\ntoken_file = {token:?}\nrefresh = \"500ms\"\ntimeout = \"2s\"\n"
    )
}

fn replica(issuer: &str, store: &str, discovery: SocketAddr) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens_file(dir.path());
    let mut setup = Setup::with_tokens(
        dir,
        tokens,
        "jwks_max_age = \"1s\"\n",
        &format!("{store}[tokens]\ndefault_ttl = \"2m\"\nmax_ttl = \"5m\"\n"),
    );
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text = text
        .replacen(
            &format!("issuer = \"http://{}\"", setup.discovery),
            &format!("issuer = {issuer:?}"),
            1,
        )
        .replacen(
            &format!("listen = \"{}\"", setup.discovery),
            &format!("listen = \"{discovery}\""),
            1,
        );
    std::fs::write(&setup.config, text).unwrap();
    setup.discovery = discovery;
    setup
}

/// HAProxy in front of the discovery listeners, checking each replica's `/readyz`: the
/// configuration of `deploy/ha/haproxy.cfg`, with loopback addresses and a check every 300 ms.
fn haproxy(dir: &Path, port: u16, setups: &[Setup]) -> Option<Process> {
    let bin = require_tool("haproxy")?;
    let deployed = std::fs::read_to_string(common::deploy_dir().join("ha/haproxy.cfg")).unwrap();
    let mut config = String::new();
    let mut servers = 0;
    for line in deployed.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("bind ") {
            config.push_str(&format!("  bind 127.0.0.1:{port}\n"));
        } else if trimmed.starts_with("default-server ") {
            config.push_str("  default-server inter 300ms fall 2 rise 2\n");
        } else if trimmed.starts_with("server ") {
            if servers == 0 {
                for (i, s) in setups.iter().enumerate() {
                    let api = s.api.port();
                    config.push_str(&format!("  server r{i} {} check port {api}\n", s.discovery));
                }
            }
            servers += 1;
        } else {
            config.push_str(line);
            config.push('\n');
        }
    }
    assert!(servers > 0, "deploy/ha/haproxy.cfg names no server");
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut command = std::process::Command::new(bin);
    command.arg("-db").arg("-f").arg(&path);
    Some(Process::spawn("haproxy", command, dir.join("haproxy.log")))
}

/// `GET http://<addr><path>`: the status and body, or 0 when nothing answered within 2 s.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    match client.get(format!("http://{addr}{path}")).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// Polls HAProxy's JWKS: records every kid it serves, and checks each answer holds the key of
/// every unexpired token handed out.
async fn watch_jwks(lb: SocketAddr, seen: Arc<Observed>) {
    while !seen.stop.load(Ordering::Relaxed) {
        let (status, body) = get(lb, "/.well-known/jwks").await;
        if status == 200 {
            let kids = common::jwks_kids(&serde_json::from_str(&body).unwrap_or(Value::Null));
            let now = Instant::now();
            {
                let mut served = seen.served.lock().unwrap();
                for kid in &kids {
                    served.entry(kid.clone()).or_insert(now);
                }
            }
            let unix = common::unix_now();
            let missing: Vec<String> = seen
                .handed_out
                .lock()
                .unwrap()
                .iter()
                .filter(|(kid, exp)| **exp > unix + 1 && !kids.contains(*kid))
                .map(|(kid, _)| kid.clone())
                .collect();
            if !missing.is_empty() {
                seen.violation(format!(
                    "HAProxy served a JWKS without keys of tokens handed out: {missing:?}"
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls each replica's own JWKS: no key may ever leave it during the test (every key's tokens
/// outlive the test), so a key set that goes backwards shows as a kid that vanished.
async fn watch_replicas(discovery: Vec<SocketAddr>, seen: Arc<Observed>) {
    let mut held: Vec<BTreeSet<String>> = vec![BTreeSet::new(); discovery.len()];
    while !seen.stop.load(Ordering::Relaxed) {
        for (i, addr) in discovery.iter().enumerate() {
            let (status, body) = get(*addr, "/.well-known/jwks").await;
            if status != 200 {
                continue;
            }
            let kids = common::jwks_kids(&serde_json::from_str(&body).unwrap_or(Value::Null));
            let lost: Vec<&String> = held[i].difference(&kids).collect();
            if !lost.is_empty() {
                seen.violation(format!(
                    "replica {i}'s key set went backwards: {lost:?} left it"
                ));
            }
            held[i].extend(kids);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Mints on every replica in turn and logs in with each token.
async fn load(apis: Vec<(SocketAddr, String)>, vault: Vec<String>, seen: Arc<Observed>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut turn = 0usize;
    while !seen.stop.load(Ordering::Relaxed) {
        let (api, bearer) = &apis[turn % apis.len()];
        turn += 1;
        let asked = Instant::now();
        let response = client
            .post(format!("http://{api}/v1/tokens"))
            .bearer_auth(bearer)
            .json(&run_body("acme", "prod", "apply"))
            .send()
            .await;
        let Ok(response) = response else { continue };
        if response.status() != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let Some(token) = body["token"].as_str() else {
            continue;
        };
        let kid = kid_of(token);
        seen.tokens.fetch_add(1, Ordering::Relaxed);
        seen.signed_at.lock().unwrap().push(Instant::now());
        match seen.served.lock().unwrap().get(&kid) {
            Some(first) if *first <= asked => {}
            other => seen.violation(format!(
                "replica {api} signed with {kid}, which HAProxy had not served before the request ({other:?})"
            )),
        }
        let exp = common::unix_now() + 120;
        seen.handed_out.lock().unwrap().insert(kid.clone(), exp);
        if !seen.no_quorum.load(Ordering::Relaxed) {
            login(&client, &vault, token, &kid, &seen).await;
        }
    }
}

/// Logs in through the nodes in turn until one answers: a 400 is a refusal of the token.
async fn login(
    client: &reqwest::Client,
    vault: &[String],
    token: &str,
    kid: &str,
    seen: &Observed,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while Instant::now() < deadline && !seen.no_quorum.load(Ordering::Relaxed) {
        let node = &vault[n % vault.len()];
        n += 1;
        let answer = client
            .post(format!("{node}/v1/auth/jwt/login"))
            .json(&json!({ "role": ROLE, "jwt": token }))
            .send()
            .await;
        let Ok(answer) = answer else { continue };
        let status = answer.status().as_u16();
        let body = answer.text().await.unwrap_or_default();
        match status {
            200 => {
                seen.logins.fetch_add(1, Ordering::Relaxed);
                return;
            }
            400 | 403 => {
                seen.refused.fetch_add(1, Ordering::Relaxed);
                seen.violation(format!("login with a token of {kid} refused: {body}"));
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The longest gap between two signed tokens in `[from, to]`.
fn longest_pause(seen: &Observed, from: Instant, to: Instant) -> Duration {
    let signed = seen.signed_at.lock().unwrap();
    let mut times: Vec<Instant> = signed
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.insert(0, from);
    times.push(to);
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

async fn readyz(setup: &Setup) -> u16 {
    get(setup.api, "/readyz").await.0
}

async fn all_ready(setups: &[Setup], status: u16) -> bool {
    for setup in setups {
        if readyz(setup).await != status {
            return false;
        }
    }
    true
}

async fn wait_all_ready(setups: &[Setup], limit: Duration) {
    let deadline = Instant::now() + limit;
    while !all_ready(setups, 200).await {
        assert!(
            Instant::now() < deadline,
            "the replicas were not all ready within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn first_signed_after(seen: &Observed, after: Instant) -> Option<Duration> {
    let signed = seen.signed_at.lock().unwrap();
    signed.iter().find(|t| **t > after).map(|t| *t - after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_a_raft_cluster_through_leader_loss_restarts_a_frozen_replica_and_quorum_loss()
{
    let Some(mut cluster) = RaftCluster::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    cluster.with_transit(&token_file).await;
    let lb_port = free_port();
    let issuer = format!("http://127.0.0.1:{lb_port}");
    let store = store_toml(&cluster.addrs(), &token_file);
    let setups: Vec<Setup> = (0..3)
        .map(|_| replica(&issuer, &store, ports().0))
        .collect();
    let mut servers: Vec<Option<Server>> = setups
        .iter()
        .map(|s| Some(s.serve(&[], &[]).ready()))
        .collect();
    let Some(_haproxy) = haproxy(dir.path(), lb_port, &setups) else {
        return;
    };
    let lb: SocketAddr = format!("127.0.0.1:{lb_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(lb, "/.well-known/jwks").await.0 != 200 {
        assert!(Instant::now() < deadline, "HAProxy serves no JWKS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    cluster
        .root_write("sys/auth/jwt", json!({ "type": "jwt" }))
        .await;
    cluster
        .root_write(
            "auth/jwt/config",
            json!({ "oidc_discovery_url": issuer, "bound_issuer": issuer }),
        )
        .await;
    cluster
        .root_write(
            &format!("auth/jwt/role/{ROLE}"),
            json!({ "role_type": "jwt", "bound_audiences": [VAULT_AUDIENCE],
                    "user_claim": "terraform_full_workspace", "token_policies": ["default"], "token_ttl": "1m" }),
        )
        .await;

    let seen = Arc::new(Observed::default());
    let watcher = tokio::spawn(watch_jwks(lb, Arc::clone(&seen)));
    let discovery = setups.iter().map(|s| s.discovery).collect();
    let replica_watcher = tokio::spawn(watch_replicas(discovery, Arc::clone(&seen)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let apis = setups
        .iter()
        .map(|s| (s.api, s.tokens.all.clone()))
        .collect();
    let loader = tokio::spawn(load(apis, cluster.addrs(), Arc::clone(&seen)));
    tokio::time::sleep(Duration::from_secs(PERIOD_SECS + 2)).await;

    // 1. The leader killed during rotations, then back from its disk.
    let t1 = Instant::now();
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    cluster.kill(leader);
    let killed = Instant::now();
    let new_leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let elected = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(PERIOD_SECS + 2)).await;
    let to_first_token = first_signed_after(&seen, killed);
    cluster.restart(leader).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pause1 = longest_pause(&seen, t1, Instant::now());
    eprintln!(
        "leader kill: node {leader} killed, node {new_leader} elected after {elected:?}, first token after the kill {to_first_token:?}"
    );

    // 2. A rolling restart of the nodes, then of the replicas.
    let t2 = Instant::now();
    for n in 0..3 {
        cluster.stop(n);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.restart(n).await;
        cluster.wait_leader(Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for (i, setup) in setups.iter().enumerate() {
        servers[i].take().unwrap().stop();
        servers[i] = Some(setup.serve(&[], &[]).ready());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let pause2 = longest_pause(&seen, t2, Instant::now());

    // 3. One replica frozen past a rotation period.
    let t3 = Instant::now();
    servers[0].as_ref().unwrap().signal("STOP");
    tokio::time::sleep(Duration::from_secs(PERIOD_SECS + 2)).await;
    servers[0].as_ref().unwrap().signal("CONT");
    wait_all_ready(&setups, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pause3 = longest_pause(&seen, t3, Instant::now());

    // 4. Quorum lost for 30 s (the last node still answers reads and signs, and the replicas go
    // on with the keys they published), then the last node down too: every replica turns
    // unready; then all restored.
    let t4 = Instant::now();
    seen.no_quorum.store(true, Ordering::Relaxed);
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let (other, last) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.kill(leader);
    cluster.kill(other);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let signed_without_quorum = seen
        .signed_at
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > t4)
        .count();
    cluster.kill(last);
    let lost = Instant::now();
    let mut unready_after = None;
    while lost.elapsed() < Duration::from_secs(15) && unready_after.is_none() {
        if all_ready(&setups, 503).await {
            unready_after = Some(lost.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in [leader, other, last] {
        cluster.restart(n).await;
    }
    cluster.wait_leader(Duration::from_secs(60)).await;
    wait_all_ready(&setups, Duration::from_secs(60)).await;
    seen.no_quorum.store(false, Ordering::Relaxed);
    let restored = Instant::now();
    tokio::time::sleep(Duration::from_secs(PERIOD_SECS + 2)).await;
    let pause4 = longest_pause(&seen, t4, Instant::now());
    let to_first_token_after_quorum = first_signed_after(&seen, restored);

    seen.stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();
    watcher.await.unwrap();
    replica_watcher.await.unwrap();

    // The record's whole history: one key per transit version, rotations a period apart.
    let mut versions: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut activations = BTreeSet::new();
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let (_, metadata) = cluster
        .call_node(
            leader,
            Method::GET,
            "secret/metadata/tfe-oidc/tfe-oidc",
            None,
        )
        .await;
    let current = metadata["data"]["current_version"].as_u64().unwrap();
    for v in 1..=current {
        let (status, record) = cluster
            .call_node(
                leader,
                Method::GET,
                &format!("secret/data/tfe-oidc/tfe-oidc?version={v}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "record version {v}: {record}");
        for key in record["data"]["data"]["keys"].as_array().unwrap() {
            let kid = key["kid"].as_str().unwrap().to_owned();
            versions
                .entry(key["version"].as_u64().unwrap())
                .or_default()
                .insert(kid);
            if let Some(at) = key["activated_at"].as_u64() {
                activations.insert(at);
            }
        }
    }
    let reused: Vec<_> = versions.iter().filter(|(_, kids)| kids.len() > 1).collect();
    let activations: Vec<u64> = activations.into_iter().collect();
    let too_close: Vec<_> = activations
        .windows(2)
        .filter(|w| w[1] - w[0] + 1 < PERIOD_SECS)
        .collect();

    let (tokens, logins, refused) = (
        seen.tokens.load(Ordering::Relaxed),
        seen.logins.load(Ordering::Relaxed),
        seen.refused.load(Ordering::Relaxed),
    );
    eprintln!(
        "HA FIGURES: tokens {tokens}, logins {logins}, refused {refused}, record versions {current}, \
         transit versions {}, rotations {}; longest issuance pause: leader kill {pause1:?}, rolling restarts {pause2:?}, \
         frozen replica {pause3:?}, quorum loss {pause4:?}; leader kill to election {elected:?}, to first token {to_first_token:?}; \
         {signed_without_quorum} tokens signed through the last node while quorum was lost; all replicas unready {unready_after:?} after the \
         whole cluster went down; first token {to_first_token_after_quorum:?} after it was restored",
        versions.len(),
        activations.len()
    );
    let violations = seen.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(refused, 0);
    assert!(
        reused.is_empty(),
        "a transit version held two keys: {reused:?}"
    );
    assert!(
        too_close.is_empty(),
        "two rotations within one period: {too_close:?}"
    );
    assert!(
        unready_after.is_some_and(|d| d < Duration::from_secs(10)),
        "replicas stayed ready without any Vault node: {unready_after:?}"
    );
    assert!(
        tokens > 50 && logins > 20,
        "too little load: {tokens} tokens, {logins} logins"
    );
    drop(servers);
}

/// A TCP proxy to `backend` that counts the HTTP requests going through it (request lines
/// `GET /v1/`, `POST /v1/`, `PUT /v1/` in the client's stream; the bodies are JSON and never
/// hold one).
async fn counting_proxy(backend: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let (mut in_read, mut in_write) = inbound.into_split();
                let (mut out_read, mut out_write) = outbound.into_split();
                let upstream = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = in_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let seen = [&b"GET /v1/"[..], b"POST /v1/", b"PUT /v1/"]
                            .iter()
                            .map(|m| buf[..n].windows(m.len()).filter(|w| w == m).count())
                            .sum::<usize>();
                        counter.fetch_add(seen as u64, Ordering::Relaxed);
                        if out_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let downstream = tokio::io::copy(&mut out_read, &mut in_write);
                tokio::join!(upstream, async {
                    let _ = downstream.await;
                });
            });
        }
    });
    (addr, count)
}

/// Vault's load from idle replicas at the default `keys.vault.refresh` (5 s): every request of
/// one replica, then of three, counted by a proxy in front of OpenBao over 20 s. Prints the
/// figures for `bench/README.md`; holds each replica to at most 0.5 requests a second (a record
/// read every 5 s, plus the token file's lookups) and the load to growing no faster than the
/// number of replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaults_load_per_idle_replica_at_the_default_refresh_grows_linearly() {
    let dir = tempfile::tempdir().unwrap();
    let Some((bao, token)) = common::bao::Bao::start_with_transit(dir.path()).await else {
        return;
    };
    let vault: SocketAddr = bao.addr.trim_start_matches("http://").parse().unwrap();
    let (proxy, count) = counting_proxy(vault).await;
    let store = format!(
        "store = \"vault-transit\"\n[keys.vault]\naddr = \"http://{proxy}\"\ntoken_file = {token:?}\n"
    );
    let window = Duration::from_secs(20);
    let mut rates = Vec::new();
    for replicas in [1usize, 3] {
        let setups: Vec<Setup> = (0..replicas)
            .map(|_| replica("https://tfe-oidc.internal", &store, ports().0))
            .collect();
        let servers: Vec<Server> = setups.iter().map(|s| s.serve(&[], &[]).ready()).collect();
        // Past the start-up calls (key, record, signing floor), then idle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = count.load(Ordering::Relaxed);
        tokio::time::sleep(window).await;
        let requests = count.load(Ordering::Relaxed) - before;
        let per_replica = requests as f64 / replicas as f64 / window.as_secs_f64();
        eprintln!(
            "VAULT LOAD: {replicas} idle replica(s), default refresh: {requests} requests in {window:?}, {per_replica:.2}/s per replica"
        );
        assert!(
            per_replica <= 0.5,
            "{per_replica:.2} requests/s per idle replica"
        );
        assert!(requests > 0, "the replicas never read the record");
        rates.push(requests as f64 / window.as_secs_f64());
        drop(servers);
    }
    assert!(
        rates[1] <= rates[0] * 3.0 * 1.5,
        "Vault's load grows faster than the replicas: {rates:?}"
    );
}
