//! Read-your-writes on a Vault or OpenBao cluster.
//!
//! Standbys answer reads themselves (OpenBao since 2.5), from storage that may be a little behind
//! the active node. Every answer carries `X-Vault-Index`: base64 of `{"cluster", "value"}`, the
//! storage state the answering node had applied. A caller that sends back the newest index it saw
//! with `X-Vault-Inconsistent: forward-active-node` is answered by a node that has applied at
//! least that state, or by the active node (the standby forwards the call). So a transit key just
//! created is found by the `rotate` that follows, and a record just written is read back. The
//! index is opaque in general; for Raft storage its `value` is a log index, compared as a number
//! to keep the newest.

use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{HeaderMap, HeaderValue};

const INDEX: &str = "X-Vault-Index";
const INCONSISTENT: &str = "X-Vault-Inconsistent";
/// Longer headers are ignored (an index is about a hundred bytes).
const MAX_INDEX_LEN: usize = 4096;

/// The newest state index seen from one cluster; shared by the clients of its nodes.
#[derive(Debug, Default)]
pub struct Consistency {
    newest: Mutex<Option<Seen>>,
}

#[derive(Debug, Clone)]
struct Seen {
    header: HeaderValue,
    cluster: String,
    value: Option<u64>,
}

impl Consistency {
    pub fn new() -> Consistency {
        Consistency::default()
    }

    /// `request` with the forwarding policy and the newest index seen.
    pub(super) fn on_request(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let request = request.header(INCONSISTENT, "forward-active-node");
        match self.lock().as_ref() {
            Some(seen) => request.header(INDEX, seen.header.clone()),
            None => request,
        }
    }

    /// Keeps the index of an answer when it is newer than the one held.
    pub(super) fn on_response(&self, headers: &HeaderMap) {
        let Some(seen) = headers.get(INDEX).and_then(parse) else {
            return;
        };
        let mut newest = self.lock();
        let newer = match newest.as_ref() {
            None => true,
            // Another cluster (restored from a snapshot, say): what it says is all there is.
            Some(held) if held.cluster != seen.cluster => true,
            Some(held) => match (held.value, seen.value) {
                (Some(held), Some(seen)) => seen > held,
                _ => true,
            },
        };
        if newer {
            *newest = Some(seen);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Seen>> {
        self.newest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn parse(header: &HeaderValue) -> Option<Seen> {
    if header.len() > MAX_INDEX_LEN {
        return None;
    }
    let json = STANDARD.decode(header.as_bytes()).ok()?;
    let index: serde_json::Value = serde_json::from_slice(&json).ok()?;
    Some(Seen {
        header: header.clone(),
        cluster: index.get("cluster")?.as_str()?.to_owned(),
        value: index.get("value")?.as_str()?.parse().ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(cluster: &str, value: &str) -> HeaderMap {
        let text = STANDARD.encode(format!(r#"{{"cluster":"{cluster}","value":"{value}"}}"#));
        let mut headers = HeaderMap::new();
        headers.insert(INDEX, HeaderValue::from_str(&text).unwrap());
        headers
    }

    fn held(c: &Consistency) -> Option<(String, Option<u64>)> {
        c.lock().as_ref().map(|s| (s.cluster.clone(), s.value))
    }

    #[test]
    fn the_newest_index_of_a_cluster_is_kept() {
        let c = Consistency::new();
        c.on_response(&index("a", "40"));
        c.on_response(&index("a", "38"));
        assert_eq!(held(&c), Some(("a".into(), Some(40))));
        c.on_response(&index("a", "41"));
        assert_eq!(held(&c), Some(("a".into(), Some(41))));
        c.on_response(&index("b", "2"));
        assert_eq!(held(&c), Some(("b".into(), Some(2))));
        let mut garbage = HeaderMap::new();
        garbage.insert(INDEX, HeaderValue::from_static("not base64!"));
        c.on_response(&garbage);
        assert_eq!(held(&c), Some(("b".into(), Some(2))));
    }
}
