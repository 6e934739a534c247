//! Limits the environment imposes on a `serve` process, and hostile answers from a Vault: the
//! built binary as operators run it, next to Vaults faked in this process.
//!
//! The fake Vaults are plain loopback TCP listeners, hostile on purpose: a 2 GB body (announced,
//! or chunked without an announced length), a body that trickles in, a login answer, an error
//! text full of terminal escapes, a secret in a field of the wrong type, an engine read that
//! never answers (with `revoke-self` counted, for SIGTERM to the real process). A real Vault
//! cannot be made to answer like that on purpose; tests/it/exchange.rs has the same cut-offs
//! against a real OpenBao, with its token accessors listed.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::process::{Server, Setup, tfe_oidc};
use common::raw::{http, read_head};
use common::{binary, require_tool, run_body};

/// How a fake Vault answers each request, given the request's head (lowercased).
type Answer = fn(&str, &mut TcpStream);

/// A fake Vault on loopback that answers every request with `answer`; counts connections.
struct FakeVault {
    addr: String,
    connections: Arc<AtomicUsize>,
}

fn fake_vault(answer: Answer) -> FakeVault {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                if let Some(head) = read_request(&mut stream) {
                    answer(&head, &mut stream);
                }
            });
        }
    });
    FakeVault { addr, connections }
}

/// Reads one request's head (lowercased) and its `Content-Length` body; `None` when the peer
/// went away.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    let head = read_head(stream)?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok().map(|()| head)
}

fn respond(stream: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

const TWO_GB: u64 = 2 << 30;

/// 2 GB of JSON whitespace, announced by `Content-Length`, sent until the peer goes away.
fn huge_announced(_: &str, stream: &mut TcpStream) {
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {TWO_GB}\r\n\r\n"
    );
    let chunk = vec![b' '; 64 << 10];
    let mut sent = 0;
    while sent < TWO_GB && stream.write_all(&chunk).is_ok() {
        sent += chunk.len() as u64;
    }
}

/// 2 GB of JSON whitespace in chunks, with no announced length.
fn huge_chunked(_: &str, stream: &mut TcpStream) {
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut chunk = format!("{:x}\r\n", 64 << 10).into_bytes();
    chunk.extend(vec![b' '; 64 << 10]);
    chunk.extend(b"\r\n");
    let mut sent = 0;
    while sent < TWO_GB && stream.write_all(&chunk).is_ok() {
        sent += 64 << 10;
    }
}

/// Headers at once, then one byte of the body every 200 ms.
fn trickle(_: &str, stream: &mut TcpStream) {
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    for _ in 0..1000 {
        if stream.write_all(b" ").is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn escapes(_: &str, stream: &mut TcpStream) {
    let text = "\u{1b}[31mpermission\u{1b}[0m denied\u{7}\u{1b}[2J";
    respond(stream, "403 Forbidden", &json!({ "errors": [text] }));
}

fn secret_in_type_error(_: &str, stream: &mut TcpStream) {
    let auth = json!({"client_token": "s.fake", "lease_duration": "s.SECRETINTYPEERROR"});
    respond(stream, "200 OK", &json!({ "auth": auth }));
}

fn login(_: &str, stream: &mut TcpStream) {
    let auth = json!({"client_token": "s.fakelogin", "accessor": "a", "policies": ["default"],
        "lease_duration": 60, "renewable": false});
    respond(stream, "200 OK", &json!({ "auth": auth }));
}

/// Revocations `login_then_stall` was sent.
static STALLED_REVOKED: AtomicUsize = AtomicUsize::new(0);

/// A login answered at once, an AWS read that never is, and `revoke-self` counted.
fn login_then_stall(head: &str, stream: &mut TcpStream) {
    if head.starts_with("get /v1/aws/") {
        std::thread::sleep(Duration::from_secs(120));
    } else if head.starts_with("post /v1/auth/token/revoke-self") {
        STALLED_REVOKED.fetch_add(1, Ordering::SeqCst);
        let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    } else {
        login(head, stream);
    }
}

/// A `serve` allowed to call `vaults`, with `env` set, run through `wrapper` (e.g. `prlimit`).
fn serve(setup: &Setup, env: &[(&str, &str)], wrapper: &[&str]) -> Server {
    let mut command = match wrapper.split_first() {
        Some((tool, args)) => {
            let mut wrapped = Command::new(tool);
            wrapped.args(args).arg(binary());
            wrapped.current_dir(setup.dir.path()).env_clear();
            if let Some(path) = std::env::var_os("PATH") {
                wrapped.env("PATH", path);
            }
            wrapped
        }
        None => tfe_oidc(setup.dir.path()),
    };
    command.arg("serve").arg("--config").arg(&setup.config);
    for (k, v) in env {
        command.env(k, v);
    }
    Server::spawn(command, setup.dir.path(), setup.api).ready()
}

fn setup(vaults: &[&str], extra: &str) -> Setup {
    let allowed: Vec<String> = vaults.iter().map(|a| format!("{a:?}")).collect();
    Setup::new(&format!(
        "[exchange]\nallowed_vault_addrs = [{}]\nvault_timeout = \"5s\"\n{extra}",
        allowed.join(", ")
    ))
}

/// `POST /v1/credentials` logging in to `vault`: status and body.
fn exchange(api: SocketAddr, bearer: &str, vault: &str, timeout: &str) -> (u16, Value) {
    let body = json!({"run": run_body("acme", "prod", "plan"), "variables": {
        "TFC_VAULT_PROVIDER_AUTH": "true", "TFC_VAULT_ADDR": vault,
        "TFC_VAULT_RUN_ROLE": "r", "TFC_VAULT_CLIENT_TIMEOUT": timeout}});
    let auth = format!("Bearer {bearer}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, _, text) = http(
        api,
        "POST",
        "/v1/credentials",
        &headers,
        body.to_string().as_bytes(),
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The peak resident set of process `pid`, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A 2 GB Vault answer, announced or chunked, and one that trickles in: each a quick 502
/// naming the bound or the timeout, and the server's peak RSS stays under 64 MiB.
#[test]
fn oversized_and_trickling_vault_answers_fail_fast_in_bounded_memory() {
    let announced = fake_vault(huge_announced);
    let chunked = fake_vault(huge_chunked);
    let slow = fake_vault(trickle);
    let setup = setup(&[&announced.addr, &chunked.addr, &slow.addr], "");
    let server = serve(&setup, &[], &[]);
    let pid = server.child.id();
    let at_start = peak_rss_kib(pid);
    for vault in [&announced, &chunked] {
        let started = Instant::now();
        let (status, body) = exchange(setup.api, &setup.tokens.all, &vault.addr, "10");
        let took = started.elapsed();
        assert_eq!(status, 502, "{body}");
        assert_eq!(
            body["message"],
            "vault_login failed for configuration default: vault's answer exceeds 4 MiB and was not read"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
        eprintln!("{}: 502 in {took:?}", vault.addr);
    }
    let started = Instant::now();
    let (status, body) = exchange(setup.api, &setup.tokens.all, &slow.addr, "2");
    let took = started.elapsed();
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        body["message"],
        "vault_login failed for configuration default: vault did not answer within 2s"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "the timeout bounds the body too: {took:?}"
    );
    let peak = peak_rss_kib(pid);
    eprintln!("VmHWM: {at_start} KiB at start, {peak} KiB after the 2 GB answers");
    assert!(peak < 64 << 10, "peak RSS {peak} KiB");
}

/// Vault's error text reaches the 502 without terminal escapes or control characters, and a
/// secret in a field of the wrong type is not echoed.
#[test]
fn vault_text_in_a_502_is_printable_and_echoes_no_value() {
    let noisy = fake_vault(escapes);
    let typed = fake_vault(secret_in_type_error);
    let setup = setup(&[&noisy.addr, &typed.addr], "");
    let server = serve(&setup, &[], &[]);
    let (status, body) = exchange(setup.api, &setup.tokens.all, &noisy.addr, "5");
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        body["message"],
        "vault_login failed for configuration default: vault answered 403: permission denied"
    );
    let (status, body) = exchange(setup.api, &setup.tokens.all, &typed.addr, "5");
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(!message.contains("SECRETINTYPEERROR"), "{message}");
    assert!(
        message.contains("invalid type: string, expected u64"),
        "{message}"
    );
    assert!(!server.stderr().contains("SECRETINTYPEERROR"));
}

/// `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` in the server's environment are ignored: the
/// login goes straight to the Vault, and the proxy sees no connection.
#[test]
fn the_vault_client_ignores_the_proxy_variables() {
    let vault = fake_vault(login);
    let proxy = fake_vault(login);
    let setup = setup(&[&vault.addr], "");
    let proxy_env = [
        ("HTTP_PROXY", proxy.addr.as_str()),
        ("http_proxy", proxy.addr.as_str()),
        ("HTTPS_PROXY", proxy.addr.as_str()),
        ("ALL_PROXY", proxy.addr.as_str()),
        ("all_proxy", proxy.addr.as_str()),
        ("NO_PROXY", ""),
    ];
    let _server = serve(&setup, &proxy_env, &[]);
    let (status, body) = exchange(setup.api, &setup.tokens.all, &vault.addr, "5");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["vault"]["default"]["token"], "s.fakelogin");
    assert_eq!(
        proxy.connections.load(Ordering::SeqCst),
        0,
        "the proxy was used"
    );
    assert_eq!(vault.connections.load(Ordering::SeqCst), 1);
}

/// Under a file-size limit (`prlimit --fsize`), an audit line that no longer fits fails the
/// write: the token is refused with a 503, the server lives on, and the audit file holds only
/// whole lines.
#[test]
fn a_file_size_limit_fails_the_audit_write_instead_of_killing_the_server() {
    let Some(prlimit) = require_tool("prlimit") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let setup = setup(&[], &format!("[audit]\npath = {audit:?}\n"));
    let limit = 16 << 10;
    let fsize = format!("--fsize={limit}");
    let mut server = serve(&setup, &[], &[prlimit.to_str().unwrap(), &fsize, "--"]);
    let mut refused = None;
    for n in 0..200 {
        let (status, body) = common::raw::post_token(
            setup.api,
            &setup.tokens.all,
            &run_body("acme", "prod", "plan"),
        );
        if status != 200 {
            refused = Some((n, status, body));
            break;
        }
    }
    let (n, status, body) = refused.expect("the audit file outgrew the limit without an error");
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["message"],
        "the audit log cannot be written, so no token is handed out; see the server log"
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died"
    );
    let (status, _, _) = http(setup.api, "GET", "/healthz", &[], b"");
    assert_eq!(status, 200);
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(text.len() <= limit, "{}", text.len());
    assert_eq!(
        text.lines().count(),
        n,
        "one whole line per token handed out"
    );
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("a cut line {line:?}: {e}"));
    }
    assert!(server.wait_exit(Duration::from_millis(10)).is_none());
}

/// SIGTERM to the real process while an exchange waits on a stalled engine read: 20 s in, the
/// exchange is cut off, its Vault token revoked (`revoke-self` reaches the Vault) and the client
/// answered 503; the process exits 0 within the 30 s drain.
#[test]
fn sigterm_during_a_stalled_exchange_revokes_its_vault_token() {
    let vault = fake_vault(login_then_stall);
    let setup = setup(&[&vault.addr], "");
    let mut server = serve(&setup, &[], &[]);
    let (api, bearer, addr) = (setup.api, setup.tokens.all.clone(), vault.addr.clone());
    let client = std::thread::spawn(move || {
        let body = json!({"run": run_body("acme", "prod", "plan"), "variables": {
            "TFC_VAULT_PROVIDER_AUTH": "true", "TFC_VAULT_ADDR": addr,
            "TFC_VAULT_RUN_ROLE": "r", "TFC_VAULT_CLIENT_TIMEOUT": "120",
            "TFC_VAULT_BACKED_AWS_AUTH": "true", "TFC_VAULT_BACKED_AWS_AUTH_TYPE": "iam_user",
            "TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE": "deploy"}});
        let auth = format!("Bearer {bearer}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        http(
            api,
            "POST",
            "/v1/credentials",
            &headers,
            body.to_string().as_bytes(),
        )
    });
    let start = Instant::now();
    while vault.connections.load(Ordering::SeqCst) < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "no engine read");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(STALLED_REVOKED.load(Ordering::SeqCst), 0);
    let signalled = Instant::now();
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(35));
    let took = signalled.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        server.stderr()
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    let (status, _, text) = client.join().unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("the exchange was cut off (shutdown)"),
        "{text}"
    );
    assert_eq!(
        STALLED_REVOKED.load(Ordering::SeqCst),
        1,
        "revoke-self not sent"
    );
    let stderr = server.stderr();
    assert!(
        stderr.contains("credentials_abandoned") && stderr.contains("shutdown"),
        "{stderr}"
    );
    eprintln!("SIGTERM to exit: {took:?}");
}
