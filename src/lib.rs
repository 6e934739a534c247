//! tfe-oidc: Terraform Enterprise's run identity tokens, issued for Vault.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, `TFE_OIDC_*` overrides and every validation rule (SPEC §3).
//! - [`keys`]: signing keys, their lifecycle, the crash-safe key store and the single writer
//!   that rotates and publishes them (SPEC §4).
//! - [`token`]: run identity inputs, TFE's claim set and RS256 signing (SPEC §6).
//! - [`discovery`]: the OpenID configuration and JWKS documents, rendered once per key set (SPEC §5).
//! - [`http`]: the discovery and API listeners, TLS, bearer auth and the error mapping (SPEC §5, §7).
//! - [`telemetry`]: logging, Prometheus metrics and the audit trail (SPEC §9).
//! - [`service`]: wiring a `Config` into a running service, and shutting it down.
//! - [`exchange`]: the credential exchange: `TFC_VAULT_*` variables → Vault logins and engine reads.
//! - [`vault`]: the one Vault client: connection pools per address and CA, typed calls and errors.
//! - [`cli`]: the commands of SPEC §2 and their exit statuses.

pub mod cli;
pub mod config;
pub mod discovery;
pub mod exchange;
pub mod http;
pub mod keys;
pub mod service;
pub mod telemetry;
pub mod token;
pub mod vault;
