//! The gate a scheduled rotation passes: may the next key sign yet? The manager asks it; push
//! mode (`crate::push`) answers. Also the rotator's log of a rotation held back by it.

use std::time::{Duration, Instant};

use super::Kid;

/// What the rotator asks before a scheduled rotation: may the next key sign yet? Push mode
/// answers no until every push target holds it; with no push targets, [`Ungated`] always says yes.
pub trait SignGate: Send + Sync {
    /// Whether every verifier that must hold a key before it signs holds `kid`.
    fn may_sign(&self, kid: &Kid) -> bool;
    /// Told after every scheduled tick whether a due rotation is being held back.
    fn rotation_held(&self, _held: bool) {}
}

/// The gate of a service without push targets: every key may sign once published.
pub struct Ungated;

impl SignGate for Ungated {
    fn may_sign(&self, _kid: &Kid) -> bool {
        true
    }
}

/// Logs a held rotation when it starts, every 30s while it lasts (at error level after a minute),
/// and when it ends.
pub(super) fn report_held(
    held: Option<Kid>,
    since: &mut Option<Instant>,
    warned: &mut Option<Instant>,
) {
    let now = Instant::now();
    let Some(next) = held else {
        if let Some(start) = since.take() {
            tracing::info!(waited = ?now - start, "every push target holds the next key: the held rotation went ahead");
        }
        *warned = None;
        return;
    };
    let start = *since.get_or_insert(now);
    if warned.is_some_and(|w| now - w < Duration::from_secs(30)) {
        return;
    }
    *warned = Some(now);
    let waited = now - start;
    if waited >= Duration::from_secs(60) {
        tracing::error!(next = %next, waited = ?waited, "rotation held back: a push target does not hold the next key yet; the current key keeps signing past its period (see tfe_oidc_push_total and /readyz)");
    } else {
        tracing::warn!(next = %next, waited = ?waited, "rotation held back: a push target does not hold the next key yet; the current key keeps signing");
    }
}
