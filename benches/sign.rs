//! In-process signing rate of tfe-oidc's own signer (no HTTP): the ceiling that `POST /v1/tokens`
//! can approach on this machine, measured the way the service signs.
//!
//! The figures:
//! - `rsa`: `SigningKey::sign` over a token-sized message (the RS256 primitive alone), 1 thread;
//! - `jws`: `token::sign` of one fixed claim set (JSON, base64url, RS256 with the parsed key),
//!   1 thread;
//! - `jsonwebtoken`: the same claim set through `jsonwebtoken::encode` (version 11, `aws_lc_rs`
//!   backend, so the same aws-lc RSA code) with an `EncodingKey` holding the same key, 1 thread:
//!   the evidence for signing through aws-lc-rs directly (README, "Dependencies"). Its `encode`
//!   re-parses the DER key (`RsaKeyPair::from_der`) on every call;
//! - `parse`: that parse alone, `RsaKeyPair::from_der` of the same key, 1 thread;
//! - `issue`: `TokenIssuer::issue` (policy check, uuid jti, claim set, JSON, base64url, RS256) —
//!   what the API handler calls for every token — on 1 thread and on one thread per core.
//!
//! `cargo bench --bench sign -- [--seconds S] [--threads N] [--json]`. With `--json` it prints one
//! JSON object on stdout (scripts/bench reads it); otherwise a short text report. Nothing is
//! asserted: this is a measurement, not a test. Run by `cargo test --all-targets` (no `--bench`
//! argument), it only signs one token each way (and checks that both ways sign the same claims), so
//! that the test suite never spends time measuring.

use futures_util::FutureExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tfe_oidc::config::{Issuer, TokenPolicy};
use tfe_oidc::keys::SigningKey;
use tfe_oidc::token::claims::{Audience, NamedInput, RunContext, RunIdInput, RunInput};
use tfe_oidc::token::kinds::TokenClaims;
use tfe_oidc::token::{TokenIssuer, TokenRequest};

fn main() {
    let mut seconds = 3.0f64;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut json = false;
    let mut measure = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(seconds),
            "--threads" => threads = args.next().and_then(|s| s.parse().ok()).unwrap_or(threads),
            "--json" => json = true,
            "--bench" => measure = true, // what `cargo bench` passes
            _ => {}                      // test filters are meaningless here
        }
    }
    let measure = measure || json;
    let duration = Duration::from_secs_f64(seconds);

    let pair = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
    let pkcs8: Pkcs8V1Der<'static> = pair.as_der().expect("PKCS#8 encoding");
    // jsonwebtoken's aws-lc backend takes an RFC 8017 RSAPrivateKey, the inside of the PKCS#8.
    let pkcs1 = Arc::new(pkcs1_of_pkcs8(pkcs8.as_ref()).to_vec());
    let key = Arc::new(SigningKey::new(pair));
    let issuer = Arc::new(TokenIssuer::new(
        Issuer::parse("https://tfe.example.com").unwrap(),
        TokenPolicy {
            default_audience: Audience::parse("vault.workload.identity").unwrap(),
            audiences: vec!["vault.workload.identity".into()],
            default_ttl: Duration::from_secs(7200),
            max_ttl: Duration::from_secs(86400),
        },
    ));
    let request = Arc::new(request());
    let claims: Arc<TokenClaims> = Arc::new(
        issuer
            .issue(&request, &key, 1_764_115_200)
            .now_or_never()
            .unwrap()
            .unwrap()
            .claims,
    );
    let jwt_key = Arc::new(EncodingKey::from_rsa_der(&pkcs1));
    let jwt_header = Arc::new(Header {
        kid: Some(key.kid().to_string()),
        ..Header::new(Algorithm::RS256)
    });
    if !measure {
        let ours = tfe_oidc::token::sign(&key, &*claims)
            .now_or_never()
            .unwrap()
            .unwrap();
        let theirs = jsonwebtoken::encode(&jwt_header, &*claims, &jwt_key).expect("jsonwebtoken");
        let payload = |token: &str| token.split('.').nth(1).map(str::to_owned);
        assert_eq!(
            payload(&ours),
            payload(&theirs),
            "both sign the same claims"
        );
        println!(
            "sign bench: signed one {}-byte token (and one through jsonwebtoken); `cargo bench --bench sign` measures",
            ours.len()
        );
        return;
    }
    // A message the size of a real signing input (header.payload).
    let message: Arc<Vec<u8>> = {
        let token = issuer
            .issue(&request, &key, 1_764_115_200)
            .now_or_never()
            .unwrap()
            .unwrap()
            .token;
        let cut = token.rfind('.').unwrap();
        Arc::new(token.as_bytes()[..cut].to_vec())
    };

    let rsa = |n: usize| {
        let (key, message) = (Arc::clone(&key), Arc::clone(&message));
        rate(n, duration, move || {
            std::hint::black_box(key.sign(&message).now_or_never());
        })
    };
    let jws = |n: usize| {
        let (key, claims) = (Arc::clone(&key), Arc::clone(&claims));
        rate(n, duration, move || {
            std::hint::black_box(tfe_oidc::token::sign(&key, &*claims).now_or_never());
        })
    };
    let jsonwebtoken = |n: usize| {
        let (header, claims, jwt_key) = (
            Arc::clone(&jwt_header),
            Arc::clone(&claims),
            Arc::clone(&jwt_key),
        );
        rate(n, duration, move || {
            std::hint::black_box(jsonwebtoken::encode(&header, &*claims, &jwt_key).unwrap());
        })
    };
    let parse = |n: usize| {
        let pkcs1 = Arc::clone(&pkcs1);
        rate(n, duration, move || {
            std::hint::black_box(aws_lc_rs::signature::RsaKeyPair::from_der(&pkcs1).unwrap());
        })
    };
    let issue = |n: usize| {
        let (key, issuer, request) = (Arc::clone(&key), Arc::clone(&issuer), Arc::clone(&request));
        rate(n, duration, move || {
            std::hint::black_box(
                issuer
                    .issue(&request, &key, 1_764_115_200)
                    .now_or_never()
                    .unwrap()
                    .unwrap(),
            );
        })
    };
    // Warm up (CPU frequency, page faults, lazy CPU feature detection).
    rate(1, Duration::from_millis(300), {
        let (key, message) = (Arc::clone(&key), Arc::clone(&message));
        move || {
            std::hint::black_box(key.sign(&message).now_or_never());
        }
    });
    let rsa_1 = rsa(1);
    let jws_1 = jws(1);
    let jsonwebtoken_1 = jsonwebtoken(1);
    let parse_1 = parse(1);
    let issue_1 = issue(1);
    let issue_n = issue(threads);

    if json {
        println!(
            "{{\"threads\":{threads},\"seconds\":{seconds},\"rsa_sign_1\":{:.1},\"rsa_sign_1_cpu\":{:.1},\"issue_1\":{:.1},\"issue_1_cpu\":{:.1},\"issue_n\":{:.1},\"issue_n_cpu\":{:.1},\"issue_per_core\":{:.1},\"jws_1\":{:.1},\"jws_1_cpu\":{:.1},\"jsonwebtoken_1\":{:.1},\"jsonwebtoken_1_cpu\":{:.1},\"parse_1\":{:.1},\"parse_1_cpu\":{:.1}}}",
            rsa_1.wall,
            rsa_1.cpu,
            issue_1.wall,
            issue_1.cpu,
            issue_n.wall,
            issue_n.cpu,
            issue_n.wall / threads as f64,
            jws_1.wall,
            jws_1.cpu,
            jsonwebtoken_1.wall,
            jsonwebtoken_1.cpu,
            parse_1.wall,
            parse_1.cpu,
        );
    } else {
        println!("tfe-oidc in-process RS256 (2048-bit), {seconds}s per figure");
        println!(
            "  (wall: per second of elapsed time; cpu: per second of CPU time, as `openssl speed`)"
        );
        let line = |what: &str, n: usize, r: Rate| {
            println!(
                "  {what:<20} {n} thread(s): {:>8.0} /s wall, {:>8.0} /s per CPU-second",
                r.wall, r.cpu
            )
        };
        line("SigningKey::sign", 1, rsa_1);
        line("token::sign", 1, jws_1);
        line("jsonwebtoken::encode", 1, jsonwebtoken_1);
        line("RsaKeyPair::from_der", 1, parse_1);
        line("TokenIssuer::issue", 1, issue_1);
        line("TokenIssuer::issue", threads, issue_n);
        println!(
            "  token::sign ÷ jsonwebtoken::encode: {:.2} wall, {:.2} per CPU-second",
            jws_1.wall / jsonwebtoken_1.wall,
            jws_1.cpu / jsonwebtoken_1.cpu
        );
    }
}

fn request() -> TokenRequest {
    let named = |id: &str, name: &str| NamedInput {
        id: id.into(),
        name: name.into(),
    };
    let run = RunContext::parse(&RunInput {
        organization: named("org-GRNbCjYNpBB6NEH9", "acme"),
        project: named("prj-vegSA59s1XPwMr2t", "Default Project"),
        workspace: named("ws-mbsd5E3Ktt5Rg2Xm", "prod"),
        run: RunIdInput {
            id: "run-X3n1AUXNGWbfECsJ".into(),
            phase: "apply".into(),
        },
    })
    .expect("a valid run");
    TokenRequest {
        subject: run.into(),
        audience: None,
        ttl: None,
    }
}

/// The RFC 8017 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (SEQUENCE { version,
/// algorithm, OCTET STRING privateKey, ... }): the form jsonwebtoken's `from_rsa_der` takes.
fn pkcs1_of_pkcs8(der: &[u8]) -> &[u8] {
    let (_, info, _) = tlv(der);
    let (_, _, rest) = tlv(info); // version
    let (_, _, rest) = tlv(rest); // algorithm
    let (tag, private_key, _) = tlv(rest);
    assert_eq!(tag, 0x04, "PKCS#8 privateKey is an OCTET STRING");
    private_key
}

/// One DER element: its tag, its contents and what follows it.
fn tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let (tag, first) = (der[0], der[1]);
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        let len = der[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n)
    };
    (tag, &der[header..header + len], &der[header + len..])
}

/// A measured rate: operations per wall-clock second (all threads together) and per second of CPU
/// time (per busy core, as `openssl speed` counts: immune to other processes on the machine).
#[derive(Clone, Copy)]
struct Rate {
    wall: f64,
    cpu: f64,
}

/// Runs `op` in a loop on `threads` threads for `duration`.
fn rate(threads: usize, duration: Duration, op: impl Fn() + Send + Sync + Clone + 'static) -> Rate {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, op) = (Arc::clone(&stop), op.clone());
            std::thread::spawn(move || {
                let cpu_start = thread_cpu_ns();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    op();
                    n += 1;
                }
                (n, thread_cpu_ns().saturating_sub(cpu_start))
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let (ops, cpu_ns) = workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .fold((0, 0), |(a, b), (n, c)| (a + n, b + c));
    let wall = ops as f64 / start.elapsed().as_secs_f64();
    let cpu = if cpu_ns > 0 {
        ops as f64 / (cpu_ns as f64 / 1e9)
    } else {
        f64::NAN
    };
    Rate { wall, cpu }
}

/// Nanoseconds this thread has spent on a CPU (Linux schedstat; 0 elsewhere).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
