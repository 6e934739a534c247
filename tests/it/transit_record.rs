//! The transit store's lifecycle record only moves forward, against a real OpenBao (`bao server
//! -dev`, KV version 2 at `secret/`) with the narrow token of `deploy/vault/transit-policy.hcl`.
//!
//! One `serve` replica rotating every few seconds, then, each as an operator or an accident would
//! do it with the root token:
//! - a soft delete of the record (`kv delete`), with the replica running and then restarted;
//! - the record undeleted: everything resumes by itself;
//! - an older record written back (`kv rollback`), running and restarted;
//! - the record's whole history deleted (`kv metadata delete`): refused running, and a start
//!   that would begin a new history over the old versions is refused too.
//!
//! Throughout: the JWKS keeps every key that signed a token handed out, `/readyz` answers 503
//! naming the record while it is refused, a restarted replica signs nothing until then, and no
//! transit version that was ever published is reused or destroyed by a new history.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::transit::{kid_of, mint, store_toml};
use common::bao::Bao;
use common::jwks_kids;
use common::process::{Server, Setup};
use common::raw::http;

const RECORD: &str = "secret/data/tfe-oidc/tfe-oidc";

fn readyz(server: &Setup) -> (u16, String) {
    let (status, _, body) = http(server.api, "GET", "/readyz", &[], b"");
    (status, body)
}

fn jwks(setup: &Setup) -> BTreeSet<String> {
    let (status, _, body) = http(setup.discovery, "GET", "/.well-known/jwks", &[], b"");
    assert_eq!(status, 200, "{body}");
    jwks_kids(&serde_json::from_str(&body).unwrap())
}

fn refused_total(setup: &Setup) -> u64 {
    let (_, _, body) = http(setup.api, "GET", "/metrics", &[], b"");
    body.lines()
        .find_map(|l| l.strip_prefix("tfe_oidc_key_store_records_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the metric is exported")
}

/// Waits until `/readyz` answers `status` with a body containing `text`.
async fn wait_readyz(setup: &Setup, status: u16, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (now, body) = readyz(setup);
        if now == status && body.contains(text) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer {status} with {text:?} within 15s: {now} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The record's latest KV version, read with the root token.
async fn record_version(bao: &Bao) -> u64 {
    let (status, answer) = bao.call(Method::GET, RECORD, Some("root"), None).await;
    assert_eq!(status, 200, "{answer}");
    answer["data"]["metadata"]["version"].as_u64().unwrap()
}

/// Watches the JWKS for `during`: every kid in `needed` must be published at every look.
async fn keeps_publishing(setup: &Setup, needed: &BTreeSet<String>, during: Duration) {
    let end = Instant::now() + during;
    while Instant::now() < end {
        let published = jwks(setup);
        assert!(
            needed.is_subset(&published),
            "the JWKS lost a key of a token handed out: needs {needed:?}, serves {published:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Mints until a token is signed by a key that did not sign `kids` yet (a rotation happened).
async fn mint_after_rotation(setup: &Setup, kids: &BTreeSet<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, token) = mint(setup).await;
        if status == 200 {
            let kid = kid_of(&token.unwrap());
            if !kids.contains(&kid) {
                return kid;
            }
        }
        assert!(Instant::now() < deadline, "no rotation within 20s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn restart(server: Server, setup: &Setup) -> Server {
    server.stop();
    let mut server = setup.serve(&[], &[]);
    if let Err((status, stderr)) = server.wait_serving() {
        panic!("serve did not start on a refused record ({status}):\n{stderr}");
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_rolled_back_record_is_refused_and_every_signing_key_stays_published() {
    let dir = tempfile::tempdir().unwrap();
    let Some((bao, token)) = Bao::start_with_transit(dir.path()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = common::write_tokens_file(dir.path());
    let setup = Setup::with_tokens(
        dir,
        tokens,
        "jwks_max_age = \"1s\"\n",
        &format!(
            "{}[tokens]\ndefault_ttl = \"2m\"\nmax_ttl = \"5m\"\n",
            store_toml(&bao.addr, &token)
        ),
    );
    let mut server = setup.serve(&[], &[]).ready();

    // Two tokens, signed by two keys: the first retired by a rotation, the second current.
    let mut signed = BTreeSet::new();
    signed.insert(mint_after_rotation(&setup, &signed).await);
    signed.insert(mint_after_rotation(&setup, &signed).await);

    // A soft delete: refused within a refresh, the keys stay published through a rotation period.
    let good = record_version(&bao).await;
    let (status, _) = bao.call(Method::DELETE, RECORD, Some("root"), None).await;
    assert_eq!(status, 204);
    let body = wait_readyz(&setup, 503, "was deleted").await;
    assert!(
        body.contains(&format!(
            "kv undelete -mount=secret -versions={good} tfe-oidc/tfe-oidc"
        )),
        "{body}"
    );
    keeps_publishing(&setup, &signed, Duration::from_secs(5)).await;
    assert!(refused_total(&setup) >= 1);

    // Restarted on the deleted record: the history's last good set, not ready, signing nothing.
    server = restart(server, &setup);
    wait_readyz(&setup, 503, "was deleted").await;
    keeps_publishing(&setup, &signed, Duration::from_secs(2)).await;
    assert_eq!(mint(&setup).await.0, 503, "a refused record signs nothing");

    // Undeleted: the replica adopts the record and signs again, by itself.
    bao.call(
        Method::POST,
        "secret/undelete/tfe-oidc/tfe-oidc",
        Some("root"),
        Some(&json!({ "versions": [good] })),
    )
    .await;
    wait_readyz(&setup, 200, "ready").await;
    signed.insert(mint_after_rotation(&setup, &signed).await);
    signed.insert(mint_after_rotation(&setup, &signed).await);

    // Older records written back (what `kv rollback` does), the second less old than the first:
    // refused, keys stay published. After a restart the chain is refused too (the second is
    // newer than the first, but older than the record before them).
    let latest = record_version(&bao).await;
    assert!(latest >= 4, "the record has a history: {latest} versions");
    for older in [latest - 3, latest - 2] {
        let (_, old) = bao
            .call(
                Method::GET,
                &format!("{RECORD}?version={older}"),
                Some("root"),
                None,
            )
            .await;
        bao.kv_put("tfe-oidc/tfe-oidc", old["data"]["data"].clone())
            .await;
    }
    let body = wait_readyz(&setup, 503, "was rolled back").await;
    assert!(
        body.contains("kv rollback -mount=secret -version="),
        "{body}"
    );
    keeps_publishing(&setup, &signed, Duration::from_secs(5)).await;
    server = restart(server, &setup);
    wait_readyz(&setup, 503, "was rolled back").await;
    keeps_publishing(&setup, &signed, Duration::from_secs(2)).await;
    assert_eq!(mint(&setup).await.0, 503);

    // The last good version written back: ready again.
    let (_, good) = bao
        .call(
            Method::GET,
            &format!("{RECORD}?version={latest}"),
            Some("root"),
            None,
        )
        .await;
    bao.kv_put("tfe-oidc/tfe-oidc", good["data"]["data"].clone())
        .await;
    wait_readyz(&setup, 200, "ready").await;

    // The whole history deleted: a running replica refuses, and a replica that starts then
    // refuses to start a new history that would destroy the versions tokens still need.
    let (status, _) = bao
        .call(
            Method::DELETE,
            "secret/metadata/tfe-oidc/tfe-oidc",
            Some("root"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    wait_readyz(&setup, 503, "whole history").await;
    keeps_publishing(&setup, &signed, Duration::from_secs(2)).await;
    server.stop();
    let mut server = setup.serve(&[], &[]);
    let Err((status, stderr)) = server.wait_serving() else {
        panic!("serve started a new key history over a transit key that signed under a record");
    };
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("has signed under it") && stderr.contains("keys.vault.key"),
        "{stderr}"
    );
    let key = bao.transit_key().await;
    assert!(
        key["keys"].as_object().unwrap().len() >= 2,
        "no version was trimmed: {key}"
    );
}
