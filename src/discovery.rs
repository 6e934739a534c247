//! The two discovery documents (docs/reference.md §3), rendered once per key set.
//!
//! `Documents::render` turns the issuer and a key set into the bytes and strong ETags the
//! discovery listener serves; handlers never serialize. The document types are public so that
//! tests and the network validator can parse what is served. No HTTP here.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::keys::KeySet;
use crate::token::kinds::claim_names;

pub const CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/.well-known/jwks";

/// `/.well-known/openid-configuration`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub jwks_uri: String,
    pub response_types_supported: Vec<String>,
    pub subject_types_supported: Vec<String>,
    pub id_token_signing_alg_values_supported: Vec<String>,
    pub scopes_supported: Vec<String>,
    pub claims_supported: Vec<String>,
}

impl ProviderMetadata {
    pub fn new(issuer: &str) -> ProviderMetadata {
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
        ProviderMetadata {
            issuer: issuer.to_owned(),
            jwks_uri: format!("{issuer}{JWKS_PATH}"),
            response_types_supported: strings(&["id_token"]),
            subject_types_supported: strings(&["public"]),
            id_token_signing_alg_values_supported: strings(&["RS256"]),
            scopes_supported: strings(&["openid"]),
            claims_supported: strings(&claim_names()),
        }
    }
}

/// One public key as served in the JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
    pub kid: String,
    pub n: String,
    pub e: String,
}

/// `/.well-known/jwks`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// Every key in the set (next, current, unexpired retired), public members only.
    pub fn new(set: &KeySet) -> JwkSet {
        let keys = set
            .keys
            .iter()
            .map(|k| Jwk {
                kty: "RSA".into(),
                use_: "sig".into(),
                alg: "RS256".into(),
                kid: k.kid.to_string(),
                n: k.jwk.n.clone(),
                e: k.jwk.e.clone(),
            })
            .collect();
        JwkSet { keys }
    }
}

/// A rendered document: its bytes and strong ETag.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub body: Bytes,
    pub etag: String,
    /// `etag` as shared bytes: a response header is then a reference count, not a copy.
    pub etag_bytes: Bytes,
}

impl Rendered {
    pub fn of<T: Serialize>(value: &T) -> Rendered {
        let body = serde_json::to_vec(value).expect("documents always serialize");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
        let etag = format!("\"{}\"", hex(&digest.as_ref()[..16]));
        Rendered {
            body: Bytes::from(body),
            etag_bytes: Bytes::copy_from_slice(etag.as_bytes()),
            etag,
        }
    }

    /// Whether an `If-None-Match` header value names this document's ETag (or is `*`).
    pub fn matches(&self, if_none_match: &str) -> bool {
        if_none_match
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag == self.etag || tag.strip_prefix("W/") == Some(&self.etag))
    }
}

/// Both documents for one key set.
#[derive(Debug, Clone)]
pub struct Documents {
    pub configuration: Rendered,
    pub jwks: Rendered,
    pub key_count: usize,
}

impl Documents {
    pub fn render(issuer: &str, set: &KeySet) -> Documents {
        Documents {
            configuration: Rendered::of(&ProviderMetadata::new(issuer)),
            jwks: Rendered::of(&JwkSet::new(set)),
            key_count: set.keys.len(),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
