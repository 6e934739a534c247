//! `tfe-oidc keys list` and `keys rotate`: the key set as a table or JSON, and offline rotation.

use std::sync::Arc;

use super::{ConfigArg, Failure, OutputFormat, load, runtime};
use crate::keys::manager::KeyManager;
use crate::keys::{KeySet, SystemClock, listing};
use crate::service;

pub(super) fn list(arg: ConfigArg, format: OutputFormat) -> Result<(), Failure> {
    let config = load(&arg)?;
    let runtime = runtime()?;
    let loaded = service::read_keys(&config, runtime.handle().clone())?;
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&listing(&loaded.set)).expect("json")
        ),
        OutputFormat::Text => print!("{}", key_table(&loaded.set)),
    }
    Ok(())
}

pub(super) fn rotate(arg: ConfigArg, force: bool) -> Result<(), Failure> {
    let config = load(&arg)?;
    let runtime = runtime()?;
    let clock = Arc::new(SystemClock);
    let store = service::open_store(&config, runtime.handle().clone(), clock.clone())?;
    let manager = KeyManager::start(store, clock, service::policy(&config))?;
    let set = manager.rotate(force)?;
    print!("{}", key_table(&set));
    Ok(())
}

fn key_table(set: &KeySet) -> String {
    let time = |t: Option<u64>| match t {
        Some(t) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
        )
        .to_string(),
        None => "-".into(),
    };
    let mut out = format!(
        "{:<43}  {:<7}  {:<20}  {:<20}  {:<20}  {:<20}\n",
        "KID", "STATE", "CREATED", "ACTIVATED", "RETIRED", "VERIFY_UNTIL"
    );
    for k in &set.keys {
        out.push_str(&format!(
            "{:<43}  {:<7}  {:<20}  {:<20}  {:<20}  {:<20}\n",
            k.kid.as_str(),
            k.state.as_str(),
            time(Some(k.created_at)),
            time(k.activated_at),
            time(k.retired_at),
            time(k.verify_until)
        ));
    }
    out
}
