//! Observability (docs/reference.md §8): logging set-up, Prometheus metrics and the audit trail.
//!
//! Metrics are plain atomics and small maps rendered in the Prometheus text format on scrape
//! (`telemetry/process.rs` adds the standard `process_*` metrics, read from `/proc/self`); the
//! audit trail is one `tracing` event per issued token plus, when configured, one JSON line per
//! token appended to `audit.path`. Nothing here ever receives a token, key or secret: audit events
//! carry the token's identifiers (jti, sub, aud, kid, times), never the token itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod process;

use crate::token::IssuedToken;
use crate::token::claims::RunPhase;
use crate::token::kinds::Kind;

/// Starts logging to stderr: JSON lines when `json`, human-readable otherwise. The filter comes
/// from `TFE_OIDC_LOG` (e.g. `debug`), `info` by default.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TFE_OIDC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, not for files or the journal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (a full disk, a file-size limit on a redirected
        // stderr) is lost; by default the subscriber would report it with `eprintln!`, which
        // panics when stderr fails, and the request being served would be dropped.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    drop(result); // already initialised (tests): keep the first subscriber
}

const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bucket, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bucket {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn add(&mut self, other: &Histogram) {
        for (count, more) in self.counts.iter_mut().zip(other.counts) {
            *count += more;
        }
        self.count += other.count;
        self.sum += other.sum;
    }
}

type HttpKey = (&'static str, &'static str, u16);

#[derive(Default)]
struct Http {
    requests: BTreeMap<HttpKey, u64>,
    durations: BTreeMap<(&'static str, &'static str), Histogram>,
}

/// Gauges read from the key set at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyGauges {
    pub current_key_age_seconds: u64,
    pub jwks_keys: usize,
    /// Rotations committed since the service started.
    pub rotations: u64,
    /// Seconds since the next key was published; `None` (no sample) when the set has none.
    pub next_key_age_seconds: Option<u64>,
    /// Unix time at which the current key started signing; `None` (no sample) without one.
    pub current_key_activated_at: Option<u64>,
    /// Keys in the set by state, in the order of `KEY_STATES`.
    pub keys_by_state: [usize; 3],
    /// `keys.rotation_period`, in seconds.
    pub rotation_period_seconds: u64,
    /// Whether the key store still holds every file the committed set needs.
    pub store_healthy: bool,
    /// Scheduled rotations or expiries that could not be committed since start.
    pub rotation_failures: u64,
    /// Times the shared key set record was refused for not moving forward, since start.
    pub records_refused: u64,
}

/// The `state` label values of `tfe_oidc_keys`, in the order of `KeyGauges::keys_by_state`.
pub const KEY_STATES: [&str; 3] = ["next", "current", "retired"];

/// The service's counters, shared by every handler.
#[derive(Default)]
pub struct Metrics {
    tokens_plan: AtomicU64,
    tokens_apply: AtomicU64,
    /// Indexed by `Kind as usize`.
    tokens_by_kind: [AtomicU64; 3],
    token_errors: Mutex<BTreeMap<&'static str, u64>>,
    discovery_refused: AtomicU64,
    /// One shard per thread that serves requests (assigned round-robin), merged on scrape: the
    /// serving threads then never wait for each other's lock, nor for a thread that was preempted
    /// while holding it, which on a busy machine is a time slice added to a request's latency.
    http: [Mutex<Http>; HTTP_SHARDS],
    connections: [ListenerConnections; 2],
    vault_requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

/// Shards of the HTTP request metrics; threads beyond this many share them.
const HTTP_SHARDS: usize = 16;

/// This thread's shard of the HTTP request metrics.
fn http_shard() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static SHARD: usize = (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % HTTP_SHARDS;
    }
    SHARD.with(|s| *s)
}

/// The two listeners, in the order of `Metrics::connections`.
const LISTENERS: [&str; 2] = ["discovery", "api"];

fn listener_index(name: &str) -> usize {
    LISTENERS.iter().position(|l| *l == name).unwrap_or(1)
}

#[derive(Default)]
struct ListenerConnections {
    open: AtomicU64,
    refused: AtomicU64,
}

/// Counts one open connection until dropped.
pub struct OpenConnection {
    metrics: Arc<Metrics>,
    listener: usize,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.connections[self.listener]
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts a token by its phase (a module test is a plan, a Stacks operation is its phase)
    /// and by its kind: both label sets stay bounded.
    pub fn token_issued(&self, kind: Kind, phase: RunPhase) {
        let counter = match phase {
            RunPhase::Plan => &self.tokens_plan,
            RunPhase::Apply => &self.tokens_apply,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.tokens_by_kind[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn token_error(&self, reason: &'static str) {
        *lock(&self.token_errors).entry(reason).or_default() += 1;
    }

    pub fn discovery_refused(&self) {
        self.discovery_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn discovery_refused_count(&self) -> u64 {
        self.discovery_refused.load(Ordering::Relaxed)
    }

    pub fn http_request(
        &self,
        listener: &'static str,
        route: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let mut http = lock(&self.http[http_shard()]);
        *http.requests.entry((listener, route, status)).or_default() += 1;
        http.durations
            .entry((listener, route))
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// A connection on `listener` is open until the returned guard drops.
    pub fn connection_opened(self: &Arc<Self>, listener: &str) -> OpenConnection {
        let listener = listener_index(listener);
        self.connections[listener]
            .open
            .fetch_add(1, Ordering::Relaxed);
        OpenConnection {
            metrics: Arc::clone(self),
            listener,
        }
    }

    /// A connection on `listener` was closed at once: the listener was at its limit.
    pub fn connection_refused(&self, listener: &str) {
        self.connections[listener_index(listener)]
            .refused
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn vault_request(&self, step: &'static str, outcome: &'static str) {
        *lock(&self.vault_requests)
            .entry((step, outcome))
            .or_default() += 1;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, keys: KeyGauges) -> String {
        let mut out = String::with_capacity(4096);
        family(
            &mut out,
            "tfe_oidc_tokens_issued_total",
            "counter",
            "Identity tokens issued, by phase (module tests: plan; Stacks: the operation).",
        );
        let _ = writeln!(
            out,
            "tfe_oidc_tokens_issued_total{{phase=\"plan\"}} {}",
            self.tokens_plan.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "tfe_oidc_tokens_issued_total{{phase=\"apply\"}} {}",
            self.tokens_apply.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "tfe_oidc_tokens_issued_by_kind_total",
            "counter",
            "Identity tokens issued, by kind: run, module_test or stack.",
        );
        for kind in Kind::ALL {
            let count = self.tokens_by_kind[kind as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "tfe_oidc_tokens_issued_by_kind_total{{kind=\"{}\"}} {count}",
                kind.as_str()
            );
        }
        family(
            &mut out,
            "tfe_oidc_token_errors_total",
            "counter",
            "Token requests refused, by reason.",
        );
        for (reason, n) in lock(&self.token_errors).iter() {
            let _ = writeln!(
                out,
                "tfe_oidc_token_errors_total{{reason=\"{reason}\"}} {n}"
            );
        }
        family(
            &mut out,
            "tfe_oidc_key_rotations_total",
            "counter",
            "Key rotations (scheduled and manual).",
        );
        let _ = writeln!(out, "tfe_oidc_key_rotations_total {}", keys.rotations);
        family(
            &mut out,
            "tfe_oidc_current_key_age_seconds",
            "gauge",
            "Seconds since the current key started signing.",
        );
        let _ = writeln!(
            out,
            "tfe_oidc_current_key_age_seconds {}",
            keys.current_key_age_seconds
        );
        family(
            &mut out,
            "tfe_oidc_jwks_keys",
            "gauge",
            "Keys in the served JWKS.",
        );
        let _ = writeln!(out, "tfe_oidc_jwks_keys {}", keys.jwks_keys);
        render_key_timeline(&mut out, &keys);
        family(
            &mut out,
            "tfe_oidc_discovery_refused_total",
            "counter",
            "Connections to the discovery listener refused by the allow list.",
        );
        let _ = writeln!(
            out,
            "tfe_oidc_discovery_refused_total {}",
            self.discovery_refused.load(Ordering::Relaxed)
        );
        self.render_http(&mut out);
        self.render_connections(&mut out);
        family(
            &mut out,
            "tfe_oidc_vault_requests_total",
            "counter",
            "Requests to Vault, by step and outcome.",
        );
        for ((step, outcome), n) in lock(&self.vault_requests).iter() {
            let _ = writeln!(
                out,
                "tfe_oidc_vault_requests_total{{step=\"{step}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        process::render(&mut out);
        out
    }

    fn render_connections(&self, out: &mut String) {
        family(
            out,
            "tfe_oidc_http_connections_open",
            "gauge",
            "Connections open now, by listener.",
        );
        for (name, c) in LISTENERS.iter().zip(&self.connections) {
            let n = c.open.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "tfe_oidc_http_connections_open{{listener=\"{name}\"}} {n}"
            );
        }
        family(
            out,
            "tfe_oidc_http_connections_refused_total",
            "counter",
            "Connections closed at once because the listener was at its connection limit.",
        );
        for (name, c) in LISTENERS.iter().zip(&self.connections) {
            let n = c.refused.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "tfe_oidc_http_connections_refused_total{{listener=\"{name}\"}} {n}"
            );
        }
    }

    fn render_http(&self, out: &mut String) {
        let mut http = Http::default();
        for shard in &self.http {
            let shard = lock(shard);
            for (key, n) in &shard.requests {
                *http.requests.entry(*key).or_default() += n;
            }
            for (key, h) in &shard.durations {
                http.durations.entry(*key).or_default().add(h);
            }
        }
        family(
            out,
            "tfe_oidc_http_requests_total",
            "counter",
            "HTTP requests, by listener, route and status.",
        );
        for ((listener, route, status), n) in &http.requests {
            let _ = writeln!(
                out,
                "tfe_oidc_http_requests_total{{listener=\"{listener}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        family(
            out,
            "tfe_oidc_http_request_duration_seconds",
            "histogram",
            "HTTP request durations.",
        );
        for ((listener, route), h) in &http.durations {
            let labels = format!("listener=\"{listener}\",route=\"{route}\"");
            for (bucket, count) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "tfe_oidc_http_request_duration_seconds_bucket{{{labels},le=\"{bucket}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "tfe_oidc_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "tfe_oidc_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "tfe_oidc_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
    }
}

/// The key gauges the alert rules of `deploy/monitoring/alerts.yml` need beyond the ones above.
fn render_key_timeline(out: &mut String, keys: &KeyGauges) {
    let mut gauge = |name: &str, help: &str, value: Option<u64>| {
        family(out, name, "gauge", help);
        if let Some(value) = value {
            let _ = writeln!(out, "{name} {value}");
        }
    };
    gauge(
        "tfe_oidc_next_key_age_seconds",
        "Seconds since the next key was published; no sample when there is no next key.",
        keys.next_key_age_seconds,
    );
    gauge(
        "tfe_oidc_last_rotation_timestamp_seconds",
        "Unix time at which the current key started signing (the last rotation, or the first key's creation).",
        keys.current_key_activated_at,
    );
    gauge(
        "tfe_oidc_key_rotation_period_seconds",
        "The configured keys.rotation_period.",
        Some(keys.rotation_period_seconds),
    );
    gauge(
        "tfe_oidc_key_store_healthy",
        "1 while the key store holds every file the key set needs, 0 while it cannot be restored.",
        Some(u64::from(keys.store_healthy)),
    );
    family(
        out,
        "tfe_oidc_keys",
        "gauge",
        "Keys in the key set, by state.",
    );
    for (state, n) in KEY_STATES.iter().zip(keys.keys_by_state) {
        let _ = writeln!(out, "tfe_oidc_keys{{state=\"{state}\"}} {n}");
    }
    family(
        out,
        "tfe_oidc_key_rotation_failures_total",
        "counter",
        "Scheduled rotations or expiries that could not be committed (each is retried).",
    );
    let _ = writeln!(
        out,
        "tfe_oidc_key_rotation_failures_total {}",
        keys.rotation_failures
    );
    family(
        out,
        "tfe_oidc_key_store_records_refused_total",
        "counter",
        "Times the shared key set record (vault-transit store) was refused because it did not move forward: deleted, rolled back or older.",
    );
    let _ = writeln!(
        out,
        "tfe_oidc_key_store_records_refused_total {}",
        keys.records_refused
    );
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The audit trail of issued tokens.
#[derive(Debug, Default)]
pub struct Audit {
    file: Option<AuditFile>,
}

#[derive(Debug)]
struct AuditFile {
    path: PathBuf,
    file: Mutex<File>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Audit {
    /// Appends to `path` (created with mode 0600) when given; logs only otherwise.
    pub fn open(path: Option<&Path>) -> std::io::Result<Audit> {
        let file = match path {
            Some(path) => Some(AuditFile {
                path: path.to_owned(),
                file: Mutex::new(open_append(path)?),
            }),
            None => None,
        };
        Ok(Audit { file })
    }

    /// Opens `audit.path` again (after logrotate moved it away, on SIGHUP); on failure the file
    /// in use is kept.
    pub fn reopen(&self) -> std::io::Result<()> {
        if let Some(audit) = &self.file {
            *lock(&audit.file) = open_append(&audit.path)?;
        }
        Ok(())
    }

    /// Records that `issued` is handed to `caller`. With an audit file, a line that cannot be
    /// written is an error: the caller must then not hand the token out. A line is written
    /// whole or not at all: a write that fails part-way (a full disk) is cut back off the file,
    /// so the next line does not continue a fragment. The log event follows the file, so that
    /// it never records a token that was not handed out.
    pub fn token_issued(&self, issued: &IssuedToken, caller: &str) -> std::io::Result<()> {
        let c = &issued.claims;
        let (iat, exp) = c.times();
        if let Some(audit) = &self.file {
            let line = AuditLine {
                aud: c.aud(),
                caller,
                event: "token_issued",
                exp,
                iat,
                jti: c.jti(),
                kid: issued.kid.as_str(),
                sub: c.sub(),
            };
            let mut text = serde_json::to_vec(&line).expect("an audit line serializes");
            text.push(b'\n');
            append_whole(&mut lock(&audit.file), &text)?;
        }
        tracing::info!(
            target: "audit",
            event = "token_issued",
            jti = %c.jti(), sub = %c.sub(), aud = %c.aud(), kid = %issued.kid,
            iat, exp, caller = %caller,
            "token issued"
        );
        Ok(())
    }
}

/// One line of `audit.path`, serialized straight from borrowed fields (it was a
/// `serde_json::Value` map: eight strings and a tree built per token). The members are declared
/// in alphabetical order, the order that map wrote them in, so the bytes are unchanged.
#[derive(serde::Serialize)]
struct AuditLine<'a> {
    aud: &'a str,
    caller: &'a str,
    event: &'static str,
    exp: u64,
    iat: u64,
    jti: &'a str,
    kid: &'a str,
    sub: &'a str,
}

/// Appends `line`, or leaves the file as it was.
fn append_whole(file: &mut File, line: &[u8]) -> std::io::Result<()> {
    let before = file.metadata()?.len();
    file.write_all(line).inspect_err(|_| {
        // Best effort: a device such as /dev/full has no length to restore.
        let _ = file.set_len(before);
    })
}

#[cfg(test)]
mod audit_line_tests {
    use super::AuditLine;

    #[test]
    fn audit_line_bytes_are_those_of_the_json_map_it_replaced() {
        let line = AuditLine {
            aud: "vault.example",
            caller: "ci \"runner\"",
            event: "token_issued",
            exp: 1_700_007_200,
            iat: 1_700_000_000,
            jti: "0b6c5a9e-4f7c-4a55-9d1e-0f3a2b1c4d5e",
            kid: "PiRAnlx-EnnxE4PTtVK-Pzz8We85igQMgJfRxBGsnWg",
            sub: "organization:acme:project:Default Project:workspace:prod:run_phase:apply",
        };
        let map = serde_json::json!({
            "event": "token_issued", "jti": line.jti, "sub": line.sub, "aud": line.aud, "kid": line.kid,
            "iat": line.iat, "exp": line.exp, "caller": line.caller,
        });
        assert_eq!(serde_json::to_string(&line).unwrap(), map.to_string());
    }
}
