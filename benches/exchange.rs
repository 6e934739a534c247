//! The credential exchange's cost: `POST /v1/credentials` (mint + Vault login + one engine read,
//! inside tfe-oidc) against the same three calls made directly by a keep-alive client in the
//! same run (`POST /v1/tokens`, `POST <vault>/v1/auth/jwt/login`, `GET <vault>/v1/aws/creds/deploy`).
//!
//! Both run against one real OpenBao dev server wired by `deploy/vault/configure.sh` with
//! `policy.hcl`, the engine read being a KV v1 stand-in at `aws/creds/deploy` (as in
//! `tests/it/exchange.rs`). Repetitions interleave the two, at 1 and 4 concurrent clients; the
//! report gives p50/p99 latency, operations per second and the exchange/direct ratios (target:
//! the exchange adds at most 15%).
//!
//! `cargo bench --bench exchange -- [--seconds S] [--reps N] [--json]`. Run by
//! `cargo test --all-targets` (no `--bench` argument) it makes three operations of each kind and
//! measures nothing.

#[path = "../tests/it/common/mod.rs"]
mod common;
mod load;

use std::sync::Arc;

use serde_json::{Value, json};

use common::bao::{Bao, deploy_vault};
use common::{Options, TestServer, run_body};

/// The order of every row's figures.
const KINDS: [Kind; 2] = [Kind::Exchange, Kind::Direct];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Exchange,
    Direct,
}

struct Setup {
    bao: Bao,
    server: TestServer,
    api: reqwest::Client,
    vault: reqwest::Client,
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
    let smoke = "exchange bench: 3 exchanges and 3 direct sequences done; `cargo bench --bench exchange` measures";
    if let Some(rows) = load::measure(&KINDS, &[1, 4], &args, op, smoke).await {
        report(&rows, args.json);
    }
}

async fn setup() -> Option<Setup> {
    let bao = Bao::start().await?;
    let server = TestServer::start(Options {
        tls: true,
        extra_toml: format!("[exchange]\nallowed_vault_addrs = [{:?}]\n", bao.addr),
        ..Options::default()
    })
    .await;
    let ca = server.pki.as_ref().unwrap().ca.to_str().unwrap().to_owned();
    let policy = deploy_vault()
        .join("policy.hcl")
        .to_str()
        .unwrap()
        .to_owned();
    let env = [
        ("ISSUER", server.issuer()),
        ("CA_FILE", ca.as_str()),
        ("ORG", "acme"),
        ("WORKSPACE", "prod"),
        ("POLICY_FILE", policy.as_str()),
    ];
    tokio::task::block_in_place(|| bao.configure(&env));
    bao.root_write(
        "sys/mounts/aws",
        json!({"type": "kv", "options": {"version": "1"}}),
    )
    .await;
    let creds =
        json!({"access_key": "AKIABENCH", "secret_key": "bench-secret", "security_token": null});
    bao.root_write("aws/creds/deploy", creds).await;
    let api = server.client();
    let vault = reqwest::Client::new();
    Some(Setup {
        bao,
        server,
        api,
        vault,
    })
}

/// One operation; panics unless every call answers 200.
async fn once(setup: &Setup, kind: Kind) {
    match kind {
        Kind::Exchange => exchange(setup).await,
        Kind::Direct => direct(setup).await,
    }
}

async fn exchange(s: &Setup) {
    let variables = json!({
        "TFC_VAULT_PROVIDER_AUTH": "true", "TFC_VAULT_ADDR": s.bao.addr, "TFC_VAULT_RUN_ROLE": "tfe-acme-prod",
        "TFC_VAULT_BACKED_AWS_AUTH": "true", "TFC_VAULT_BACKED_AWS_AUTH_TYPE": "iam_user",
        "TFC_VAULT_BACKED_AWS_RUN_VAULT_ROLE": "deploy",
    });
    let body = json!({"run": run_body("acme", "prod", "apply"), "variables": variables});
    let url = s.server.api_url("/v1/credentials");
    let answer = load::post(
        s.api
            .post(url)
            .bearer_auth(&s.server.tokens.all)
            .json(&body),
    )
    .await;
    assert_eq!(answer["aws"]["default"]["access_key_id"], "AKIABENCH");
}

async fn direct(s: &Setup) {
    let url = s.server.api_url("/v1/tokens");
    let minted = load::post(
        s.api
            .post(url)
            .bearer_auth(&s.server.tokens.all)
            .json(&run_body("acme", "prod", "apply")),
    )
    .await;
    let login = json!({"role": "tfe-acme-prod", "jwt": minted["token"]});
    let url = format!("{}/v1/auth/jwt/login", s.bao.addr);
    let auth = load::post(s.vault.post(url).json(&login)).await;
    let token = auth["auth"]["client_token"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/aws/creds/deploy", s.bao.addr);
    let read = load::post(s.vault.get(url).header("X-Vault-Token", token)).await;
    assert_eq!(read["data"]["access_key"], "AKIABENCH");
}

fn report(rows: &[load::Row<2>], json: bool) {
    if json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                let [(ep50, ep99, eops), (dp50, dp99, dops)] = r.figures;
                json!({"clients": r.clients,
                       "exchange": {"p50_ms": ep50, "p99_ms": ep99, "ops_per_s": eops},
                       "direct": {"p50_ms": dp50, "p99_ms": dp99, "ops_per_s": dops},
                       "p50_ratio": ep50 / dp50, "p99_ratio": ep99 / dp99, "throughput_ratio": eops / dops})
            })
            .collect();
        println!("{}", json!({"exchange_bench": out}));
        return;
    }
    println!(
        "| clients | exchange p50 / p99 ms | direct p50 / p99 ms | exchange / direct ops/s | p50 ratio | p99 ratio | throughput ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let [(ep50, ep99, eops), (dp50, dp99, dops)] = r.figures;
        println!(
            "| {} | {ep50:.2} / {ep99:.2} | {dp50:.2} / {dp99:.2} | {eops:.0} / {dops:.0} | {:.2} | {:.2} | {:.2} |",
            r.clients,
            ep50 / dp50,
            ep99 / dp99,
            eops / dops
        );
    }
}
