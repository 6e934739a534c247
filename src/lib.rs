//! tfe-oidc: Terraform Enterprise's run identity tokens, issued for Vault.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, `TFE_OIDC_*` overrides and every validation rule (docs/reference.md §2).
//! - [`keys`]: signing keys, their lifecycle, the crash-safe key store and the single writer
//!   that rotates and publishes them (docs/reference.md §7).
//! - [`token`]: the token kinds TFE signs (workspace runs, module tests, Stacks deployments),
//!   their input rules and claim sets, and RS256 signing.
//! - [`discovery`]: the OpenID configuration and JWKS documents, rendered once per key set (docs/reference.md §3).
//! - [`http`]: the discovery and API listeners, TLS, bearer auth and the error mapping (docs/reference.md §3, §4).
//! - [`push`]: push mode: keeps each Vault JWT auth mount's `jwt_validation_pubkeys` in sync,
//!   and holds rotation back until every push target has the next key.
//! - [`telemetry`]: logging, Prometheus metrics and the audit trail (docs/reference.md §8).
//! - [`service`]: wiring a `Config` into a running service, and shutting it down.
//! - [`systemd`]: the readiness notification of `Type=notify` units.
//! - [`exchange`]: the credential exchange: `TFC_VAULT_*` variables → Vault logins and engine reads.
//! - [`vault`]: the one Vault client: connection pools per address and CA, typed calls and errors.
//! - [`run`]: `tfe-oidc run`, the agent side of the exchange: files, environment, COMMAND,
//!   renewal and revocation.
//! - [`validate`]: the network validator, run where Vault runs; never touches the key store.
//! - [`cli`]: the commands of docs/reference.md §1 and their exit statuses.
//! - [`glob`]: Vault's glob matching, for audiences and `sub` bindings.
//!
//! Each module uses only the ones below it: `config` builds the value types that `keys`,
//! `token` and `vault` own (`RsaBits`, `TransitConfig`, `Issuer`, `TokenPolicy`, `VaultAuth`),
//! and none of those reaches up into `config`, `cli` or `http`.

pub mod cli;
pub mod config;
pub mod discovery;
pub mod exchange;
pub mod glob;
pub mod http;
pub mod keys;
pub mod push;
pub mod run;
pub mod service;
pub mod systemd;
pub mod telemetry;
pub mod token;
pub mod validate;
pub mod vault;
