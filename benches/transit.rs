//! What the Vault transit key store costs: `POST /v1/tokens` on a server with the transit store
//! against the same request on a server with the file store, and against OpenBao's own signing
//! rate (`POST <vault>/v1/transit/sign/<key>/sha2-256` with an explicit `key_version`, what the
//! store sends), made directly by a keep-alive client, all in the same run.
//!
//! One real OpenBao dev server with transit mounted; the transit server logs in with the token of
//! `deploy/vault/transit-policy.hcl`. Repetitions interleave the three, at 1 and 8 concurrent
//! clients; the report gives p50/p99 latency, operations per second, and the ratios transit/file
//! and transit/Vault-direct.
//!
//! `cargo bench --bench transit -- [--seconds S] [--reps N] [--json] [--json-out FILE]`. Run by
//! `cargo test --all-targets` (no `--bench` argument) it makes three operations of each kind and
//! measures nothing.

#[path = "../tests/it/common/mod.rs"]
mod common;
mod load;

use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};

use common::bao::Bao;
use common::{Options, TestServer, run_body};

/// The order of every row's figures.
const KINDS: [Kind; 3] = [Kind::File, Kind::Transit, Kind::VaultDirect];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    File,
    Transit,
    VaultDirect,
}

struct Setup {
    bao: Bao,
    file: TestServer,
    transit: TestServer,
    client: reqwest::Client,
    /// The version the transit server signs with now.
    version: u64,
    /// Holds the transit server's token file.
    _token_dir: tempfile::TempDir,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = load::args();
    let Some(setup) = setup().await else { return };
    let setup = Arc::new(setup);
    let op = move |kind| {
        let setup = Arc::clone(&setup);
        async move { once(&setup, kind).await }
    };
    let smoke =
        "transit bench: 3 operations of each kind done; `cargo bench --bench transit` measures";
    if let Some(rows) = load::measure(&KINDS, &[1, 8], &args, op, smoke).await {
        report(&rows, args.json, args.json_out.as_deref());
    }
}

async fn setup() -> Option<Setup> {
    let token_dir = tempfile::tempdir().unwrap();
    let (bao, token) = Bao::start_with_transit(token_dir.path()).await?;
    let file = TestServer::start(Options::default()).await;
    let transit = TestServer::start(Options {
        keys_toml: format!(
            "store = \"vault-transit\"\n[keys.vault]\naddr = {:?}\ntoken_file = {token:?}\n",
            bao.addr
        ),
        ..Options::default()
    })
    .await;
    let version = bao.transit_key().await["min_encryption_version"]
        .as_u64()
        .unwrap();
    Some(Setup {
        bao,
        file,
        transit,
        client: reqwest::Client::new(),
        version,
        _token_dir: token_dir,
    })
}

/// One operation; panics unless it answers 200 with a signature.
async fn once(s: &Setup, kind: Kind) {
    match kind {
        Kind::File => token(s, &s.file).await,
        Kind::Transit => token(s, &s.transit).await,
        Kind::VaultDirect => {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &rand_bytes());
            let body = json!({
                "input": base64::engine::general_purpose::STANDARD.encode(digest.as_ref()),
                "prehashed": true,
                "key_version": s.version,
                "signature_algorithm": "pkcs1v15",
            });
            let url = format!("{}/v1/transit/sign/tfe-oidc/sha2-256", s.bao.addr);
            let answer = load::post(
                s.client
                    .post(url)
                    .header("X-Vault-Token", "root")
                    .json(&body),
            )
            .await;
            assert!(answer["data"]["signature"].as_str().is_some());
        }
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    bytes
}

async fn token(s: &Setup, server: &TestServer) {
    let url = server.api_url("/v1/tokens");
    let answer = load::post(
        s.client
            .post(url)
            .bearer_auth(&server.tokens.all)
            .json(&run_body("acme", "prod", "apply")),
    )
    .await;
    assert!(answer["token"].as_str().is_some());
}

fn report(rows: &[load::Row<3>], json: bool, json_out: Option<&str>) {
    if json || json_out.is_some() {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                let [(fp50, fp99, fops), (tp50, tp99, tops), (vp50, vp99, vops)] = r.figures;
                json!({"clients": r.clients,
                       "file": {"p50_ms": fp50, "p99_ms": fp99, "ops_per_s": fops},
                       "transit": {"p50_ms": tp50, "p99_ms": tp99, "ops_per_s": tops},
                       "vault_sign": {"p50_ms": vp50, "p99_ms": vp99, "ops_per_s": vops},
                       "transit_vs_file_throughput": tops / fops,
                       "transit_vs_vault_sign_throughput": tops / vops,
                       "transit_vs_vault_sign_p50": tp50 / vp50})
            })
            .collect();
        let document = json!({"transit_bench": out});
        if let Some(path) = json_out {
            std::fs::write(path, format!("{document:#}\n")).unwrap();
        }
        if json {
            println!("{document}");
            return;
        }
    }
    println!(
        "| clients | file store p50 / p99 ms, tokens/s | transit store p50 / p99 ms, tokens/s | vault transit/sign p50 / p99 ms, signs/s | transit ÷ file tokens/s | transit ÷ vault signs/s | transit ÷ vault p50 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let [(fp50, fp99, fops), (tp50, tp99, tops), (vp50, vp99, vops)] = r.figures;
        println!(
            "| {} | {fp50:.2} / {fp99:.2}, {fops:.0} | {tp50:.2} / {tp99:.2}, {tops:.0} | {vp50:.2} / {vp99:.2}, {vops:.0} | {:.2} | {:.2} | {:.2} |",
            r.clients,
            tops / fops,
            tops / vops,
            tp50 / vp50
        );
    }
}
