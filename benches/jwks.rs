//! How long the JWKS takes to render as the key set grows (scripts/bench, phase `grow`); a
//! measurement, not a test.
//!
//!     cargo bench --bench jwks -- <jwks.json>...
//!
//! For each JWKS document given (as the discovery listener served it), parses it into the key
//! set's public form and times `Rendered::of`: the JSON serialization and the SHA-256 ETag the key
//! manager computes once per committed key set. Prints one JSON line per document: its keys, its
//! bytes and the median over 5 batches of the time of one render, in microseconds.

use std::time::{Duration, Instant};

use tfe_oidc::discovery::{JwkSet, Rendered};

fn main() {
    let paths: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for path in paths {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let set: JwkSet = serde_json::from_slice(&bytes).expect("a JWKS");
        let mut batches = Vec::new();
        for _ in 0..5 {
            let (start, mut n) = (Instant::now(), 0u32);
            while start.elapsed() < Duration::from_millis(100) {
                std::hint::black_box(Rendered::of(std::hint::black_box(&set)));
                n += 1;
            }
            batches.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(n));
        }
        batches.sort_by(f64::total_cmp);
        let rendered = Rendered::of(&set);
        println!(
            "{}",
            serde_json::json!({
                "path": path, "keys": set.keys.len(), "bytes": rendered.body.len(),
                "render_us": batches[2],
            })
        );
    }
}
