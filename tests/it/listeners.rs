//! The listeners against peers that misbehave, and the service across signals: every connection
//! is bounded in time and number, bodies are one strict JSON object, the audit fails closed,
//! start-up writes nothing until both ports are bound, SIGHUP reloads files, and SIGTERM answers
//! what was already sent.

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::process::{Server, Setup, run, text, tfe_oidc};
use common::raw::{http, read_head, read_response};
use common::{Options, RUN_FLAGS, TestPki, TestServer, run_body, write_tokens_file};
use serde_json::Value;

/// Connects, sends `bytes`, then reads until the server closes; returns how long that took and
/// what was read. Panics if the server keeps the connection open for 20 s.
fn held_for(addr: SocketAddr, bytes: &[u8]) -> (Duration, String) {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => read.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("still open after {:?} ({e})", start.elapsed()),
        }
    }
    (start.elapsed(), String::from_utf8_lossy(&read).into_owned())
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_preface_only_slow_header_and_slow_body_peers_are_dropped_within_ten_seconds() {
    let server = TestServer::start(Options::default()).await;
    let discovery: SocketAddr = server.config.discovery.listen;
    let api = server.running.api_addr;
    let slow_body = format!(
        "POST /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{{",
        server.tokens.all
    );
    let cases: Vec<(&str, SocketAddr, Vec<u8>)> = vec![
        ("nothing sent (discovery)", discovery, vec![]),
        ("nothing sent (api)", api, vec![]),
        (
            "half an HTTP/2 preface",
            discovery,
            H2_PREFACE[..10].to_vec(),
        ),
        ("the HTTP/2 preface alone", discovery, H2_PREFACE.to_vec()),
        (
            "headers never finished",
            api,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec(),
        ),
        (
            "an idle keep-alive connection",
            discovery,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "Content-Length: 400 and one byte",
            api,
            slow_body.into_bytes(),
        ),
    ];
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(name, addr, bytes)| {
            tokio::task::spawn_blocking(move || (name, held_for(addr, &bytes)))
        })
        .collect();
    for handle in handles {
        let (name, (held, read)) = handle.await.unwrap();
        assert!(
            held >= Duration::from_secs(9) && held <= Duration::from_secs(13),
            "{name}: held for {held:?}, expected about 10s"
        );
        if name.starts_with("Content-Length") {
            assert!(read.starts_with("HTTP/1.1 408"), "{name}: {read}");
            assert!(read.contains("request_timeout"), "{name}: {read}");
        }
        if name.starts_with("an idle") {
            assert!(read.starts_with("HTTP/1.1 200"), "{name}: {read}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_exactly_one_json_object_and_bad_framing_is_a_400() {
    let server = TestServer::start(Options::default()).await;
    let api = server.running.api_addr;
    let valid = run_body("acme", "prod", "plan").to_string();
    let auth = format!("Bearer {}", server.tokens.all);
    let post = |body: String| {
        let auth = auth.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                http(
                    api,
                    "POST",
                    "/v1/tokens",
                    &[
                        ("Authorization", &auth),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                )
            })
            .await
            .unwrap()
        }
    };
    for (name, body) in [
        ("trailing garbage", format!("{valid} xyz")),
        ("two objects", format!("{valid}{valid}")),
        ("an array", format!("[{valid}]")),
        ("a string", "\"hello\"".to_owned()),
    ] {
        let (status, _, answer) = post(body).await;
        assert_eq!(status, 400, "{name}: {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["error"], "invalid_request", "{name}");
        assert!(answer.get("token").is_none());
    }
    // A chunked body whose chunk size is not hexadecimal.
    let malformed = format!(
        "POST /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
    );
    let (_, read) = tokio::task::spawn_blocking(move || held_for(api, malformed.as_bytes()))
        .await
        .unwrap();
    assert!(
        read.starts_with("HTTP/1.1 400"),
        "malformed chunked: {read}"
    );
    assert!(read.contains("invalid_request"), "{read}");
    // A client that goes away mid-body is no payload_too_large.
    let partial = format!(
        "POST /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"org"
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(api).unwrap();
        stream.write_all(partial.as_bytes()).unwrap();
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = server
        .client()
        .get(server.api_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("reason=\"payload_too_large\""),
        "{metrics}"
    );
    assert!(metrics.contains("tfe_oidc_tokens_issued_total{phase=\"plan\"} 0"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_file_that_cannot_be_written_withholds_the_token_with_503() {
    let server = TestServer::start(Options {
        extra_toml: "[audit]\npath = \"/dev/full\"".into(),
        ..Options::default()
    })
    .await;
    let (status, body) = server.post_token(&run_body("acme", "prod", "apply")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable");
    assert!(body.get("token").is_none(), "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("audit"),
        "{body}"
    );
    server.stop().await;

    // `token issue` likewise prints nothing and fails.
    let setup = Setup::new("[audit]\npath = \"/dev/full\"");
    setup.serve(&[], &[]).ready().stop();
    let mut issue = vec!["token", "issue"];
    issue.extend_from_slice(RUN_FLAGS);
    issue.extend(["--phase", "plan"]);
    let out = run(&mut setup.command(&issue));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "a token was printed");
    assert!(text(&out.stderr).contains("audit"), "{}", text(&out.stderr));
}

#[test]
fn a_busy_port_creates_no_keys_and_names_the_key_and_its_variable() {
    let setup = Setup::new("");
    let _busy = TcpListener::bind(setup.api).unwrap();
    let mut server = setup.serve(&[], &[]);
    let status = server.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", server.stderr());
    let stderr = server.stderr();
    assert!(
        stderr.contains("api.listen (TFE_OIDC_API_LISTEN)"),
        "{stderr}"
    );
    assert!(!setup.keys.exists(), "keys were created: {:?}", setup.keys);
}

/// `serve` under a descriptor limit of 256 (`ulimit -n`), as the review ran it.
fn serve_with_fd_limit(setup: &Setup) -> Server {
    let mut command = tfe_oidc(setup.dir.path());
    command.args([
        "-c",
        &format!(
            "ulimit -n 256 && exec {} serve --config {}",
            common::binary().display(),
            setup.config.display()
        ),
    ]);
    command.env("TFE_OIDC_LOG", "error");
    let mut sh = Command::new("sh");
    sh.args(command.get_args()).current_dir(setup.dir.path());
    sh.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap());
    Server::spawn(sh, setup.dir.path(), setup.api).ready()
}

#[test]
fn a_flood_on_one_listener_is_capped_and_counted_and_the_other_keeps_answering() {
    let setup = Setup::new("");
    let mut server = serve_with_fd_limit(&setup);
    for (flooded, other, name) in [
        (setup.api, setup.discovery, "api"),
        (setup.discovery, setup.api, "discovery"),
    ] {
        let flood: Vec<TcpStream> = (0..300)
            .filter_map(|_| TcpStream::connect(flooded).ok())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..5 {
            let start = Instant::now();
            let (status, _, _) = http(other, "GET", "/healthz", &[], b"");
            assert_eq!(status, 200, "{name} flooded");
            assert!(start.elapsed() < Duration::from_secs(2), "{name} flooded");
        }
        if name == "api" {
            let (status, _, _) = http(setup.discovery, "GET", "/.well-known/jwks", &[], b"");
            assert_eq!(status, 200, "JWKS with the api flooded");
        }
        drop(flood);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, _, metrics) = http(setup.api, "GET", "/metrics", &[], b"");
    for listener in ["api", "discovery"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "tfe_oidc_http_connections_refused_total{{listener=\"{listener}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no refusal count for {listener}:\n{metrics}"));
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 100, "{line}");
    }
    assert!(server.child.try_wait().unwrap().is_none(), "still running");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tokens_file_and_the_tls_files_and_keeps_failed_ones() {
    common::init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let first = TestPki::new(&mkdir(dir.path().join("a")));
    let second = TestPki::new(&mkdir(dir.path().join("b")));
    let live_cert = dir.path().join("live-cert.pem");
    let live_key = dir.path().join("live-key.pem");
    std::fs::copy(&first.server_cert, &live_cert).unwrap();
    std::fs::copy(&first.server_key, &live_key).unwrap();
    let old = write_tokens_file(dir.path());
    let setup = Setup::with_tokens(
        dir,
        old.clone(),
        &format!("tls_cert = {live_cert:?}\ntls_key = {live_key:?}"),
        "",
    );
    let mut server = setup.serve(&[], &[]).ready();
    let https = |pki: &TestPki| {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    };
    let jwks_url = format!("https://{}/.well-known/jwks", setup.discovery);
    assert!(https(&first).get(&jwks_url).send().await.is_ok());
    assert!(https(&second).get(&jwks_url).send().await.is_err());

    // New tokens and a new certificate, then SIGHUP.
    let new = write_tokens_file(setup.dir.path());
    std::fs::copy(&second.server_cert, &live_cert).unwrap();
    std::fs::copy(&second.server_key, &live_key).unwrap();
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP killed the server"
    );
    assert_eq!(status_with(setup.api, &new.all), 200, "the new token");
    assert_eq!(status_with(setup.api, &old.all), 401, "the old token");
    assert!(https(&second).get(&jwks_url).send().await.is_ok());
    assert!(https(&first).get(&jwks_url).send().await.is_err());

    // A broken tokens file and a key that does not match: both kept as they were.
    std::fs::write(setup.dir.path().join("api-tokens"), "not a tokens file\n").unwrap();
    std::fs::copy(&first.server_key, &live_key).unwrap();
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP killed the server"
    );
    assert_eq!(
        status_with(setup.api, &new.all),
        200,
        "the tokens in use are kept"
    );
    assert!(https(&second).get(&jwks_url).send().await.is_ok());
    let stderr = server.stderr();
    assert!(stderr.contains("api.tokens_file not reloaded"), "{stderr}");
    assert!(stderr.contains("TLS files not reloaded"), "{stderr}");
    server.stop();
}

fn status_with(api: SocketAddr, bearer: &str) -> u16 {
    let auth = format!("Bearer {bearer}");
    http(api, "GET", "/v1/keys", &[("Authorization", &auth)], b"").0
}

fn mkdir(path: std::path::PathBuf) -> std::path::PathBuf {
    std::fs::create_dir_all(&path).unwrap();
    path
}

#[test]
fn sigterm_answers_every_request_already_sent_and_resets_none() {
    let setup = Setup::new("");
    let mut server = setup.serve(&[], &[]).ready();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    // Set (in nanoseconds since `origin`) just before SIGTERM is sent: a request written before
    // then must be answered; one written after may meet a closed port, which is a refusal.
    let origin = Instant::now();
    let sigterm_at = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (stop, answered, sigterm_at, addr) = (
                Arc::clone(&stop),
                Arc::clone(&answered),
                Arc::clone(&sigterm_at),
                setup.discovery,
            );
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) = TcpStream::connect(addr) else {
                        break; // the socket is closed: shutdown is under way
                    };
                    stream
                        .set_read_timeout(Some(Duration::from_secs(40)))
                        .unwrap();
                    let request =
                        b"GET /.well-known/jwks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
                    let written = stream.write_all(request).is_ok();
                    let before_sigterm =
                        (origin.elapsed().as_nanos() as u64) < sigterm_at.load(Ordering::SeqCst);
                    let outcome = written
                        .then(|| std::panic::catch_unwind(move || read_response(&mut stream)).ok())
                        .flatten();
                    match outcome {
                        Some((200, _, _)) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Some((status, _, body)) => failures.push(format!("{status} {body}")),
                        None if before_sigterm => failures
                            .push("sent before SIGTERM, reset or closed without an answer".into()),
                        None => {} // sent after SIGTERM: refused
                    }
                }
                failures
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    sigterm_at.store(origin.elapsed().as_nanos() as u64, Ordering::SeqCst);
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(35));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?}\n{}",
        server.stderr()
    );
    assert!(answered.load(Ordering::Relaxed) > 50);
    assert!(
        failures.is_empty(),
        "requests sent but not answered: {failures:?}"
    );
}

/// Keep-alive clients that send their next request the moment an answer arrives: once SIGTERM
/// has come, every HTTP/1 answer says `Connection: close`, so no request is ever written on a
/// connection the server is closing, and none is reset or left unanswered.
#[test]
fn sigterm_tells_keep_alive_clients_to_close_and_resets_none() {
    let setup = Setup::new("");
    let mut server = setup.serve(&[], &[]).ready();
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, closes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (stop, answered, closes, addr) = (
                Arc::clone(&stop),
                Arc::clone(&answered),
                Arc::clone(&closes),
                setup.discovery,
            );
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                'connections: while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) = TcpStream::connect(addr) else {
                        break; // the socket is closed: shutdown is under way
                    };
                    stream
                        .set_read_timeout(Some(Duration::from_secs(40)))
                        .unwrap();
                    let mut sent_on_this = 0;
                    loop {
                        let request = b"GET /.well-known/jwks HTTP/1.1\r\nHost: x\r\n\r\n";
                        if stream.write_all(request).is_err() {
                            // A fresh connection accepted after the drain: a refusal.
                            if sent_on_this > 0 {
                                failures.push("write failed on a kept-alive connection".into());
                            }
                            continue 'connections;
                        }
                        sent_on_this += 1;
                        match read_one_response(&mut stream) {
                            Some((200, close)) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                                if close {
                                    closes.fetch_add(1, Ordering::Relaxed);
                                    continue 'connections;
                                }
                            }
                            Some((status, _)) => failures.push(format!("status {status}")),
                            None if sent_on_this > 1 => {
                                failures.push(
                                    "a request on a kept-alive connection was reset or not answered"
                                        .into(),
                                );
                                continue 'connections;
                            }
                            None => continue 'connections,
                        }
                        if stop.load(Ordering::Relaxed) {
                            break 'connections;
                        }
                    }
                }
                failures
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(35));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?}\n{}",
        server.stderr()
    );
    assert!(answered.load(Ordering::Relaxed) > 50);
    assert!(
        closes.load(Ordering::Relaxed) >= 1,
        "no answer announced the close"
    );
    assert!(
        failures.is_empty(),
        "requests sent but not answered: {failures:?}"
    );
}

/// One HTTP/1.1 response read off a kept-alive connection: its status and whether it says
/// `Connection: close`; `None` when the connection was reset or closed first.
fn read_one_response(stream: &mut TcpStream) -> Option<(u16, bool)> {
    let head = read_head(stream)?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let length: usize = header("content-length:")?.parse().ok()?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some((status, header("connection:").is_some_and(|v| v == "close")))
}

#[test]
fn idle_http2_peers_do_not_hold_up_shutdown() {
    let setup = Setup::new("");
    let mut server = setup.serve(&[], &[]).ready();
    // Connections that speak HTTP/2 (the preface and an empty SETTINGS frame), then go silent and
    // never read: they ignore GOAWAY and never acknowledge a PING.
    const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let peers: Vec<TcpStream> = (0..20)
        .map(|i| {
            let addr = if i % 2 == 0 {
                setup.discovery
            } else {
                setup.api
            };
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.write_all(H2_PREFACE).unwrap();
            stream.write_all(EMPTY_SETTINGS).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", server.stderr());
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "idle HTTP/2 peers held shutdown for {:?}",
        start.elapsed()
    );
    drop(peers);
}
