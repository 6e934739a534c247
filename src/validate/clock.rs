//! The `clock` check: this host's clock against the server's `Date` header.
//!
//! Tokens are valid from 5 s before they are issued (`nbf = iat - 5`), and Vault tolerates 60 s
//! of skew (`clock_skew_leeway`). So up to 5 s passes, up to 60 s passes with a warning (logins
//! still work, on the leeway), and beyond 60 s fails: fresh tokens are not yet valid for Vault
//! when the issuer is ahead, and expire early when it is behind.

use std::time::{SystemTime, UNIX_EPOCH};

use super::fetch::Answer;
use super::report::Check;

/// Above this many seconds of difference: a warning.
pub const WARN_SECS: i64 = 5;
/// Above this many seconds: a failure (Vault's default `clock_skew_leeway`).
pub const FAIL_SECS: i64 = 60;

pub fn check(answer: &Answer) -> Check {
    let Some(date) = answer.date.as_deref() else {
        return Check::pass("clock", "the server sent no Date header: not compared");
    };
    let Ok(server) = httpdate::parse_http_date(date) else {
        return Check::pass(
            "clock",
            format!("unreadable Date header {date:?}: not compared"),
        );
    };
    judge(skew(server, answer.sent_at, answer.received_at))
}

/// Server minus local time in seconds. `Date` has whole seconds, so the server's clock was in
/// `[date, date + 1)` when it answered, between our `sent` and `received`.
fn skew(server: SystemTime, sent: SystemTime, received: SystemTime) -> i64 {
    let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    let local_mid = (ms(sent) + ms(received)) / 2;
    let server_mid = ms(server) + 500;
    (server_mid - local_mid) / 1000
}

fn judge(skew: i64) -> Check {
    let direction = if skew >= 0 { "ahead of" } else { "behind" };
    let detail = format!(
        "the server's clock is {}s {direction} this host's",
        skew.unsigned_abs()
    );
    let ntp = "run NTP (chrony or systemd-timesyncd) on both hosts";
    match skew.abs() {
        s if s <= WARN_SECS => Check::pass("clock", format!("{detail} (within {WARN_SECS}s)")),
        s if s <= FAIL_SECS => Check::warn(
            "clock",
            format!(
                "{detail}: more than {WARN_SECS}s, logins work only on Vault's {FAIL_SECS}s leeway"
            ),
            ntp,
        ),
        _ => Check::fail(
            "clock",
            format!(
                "{detail}: more than Vault's {FAIL_SECS}s leeway, fresh tokens will be refused"
            ),
            ntp,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bounds_pass_warn_fail() {
        assert!(judge(0).ok && judge(-5).fix.is_none());
        let warned = judge(30);
        assert!(warned.ok && warned.fix.is_some(), "{warned:?}");
        assert!(!judge(-61).ok);
        assert!(judge(-61).detail.contains("61s behind"));
    }

    #[test]
    fn skew_accounts_for_whole_second_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = t + Duration::from_millis(200);
        assert_eq!(skew(t, t, later), 0);
        assert_eq!(skew(t + Duration::from_secs(90), t, later), 90);
        assert_eq!(skew(t - Duration::from_secs(90), t, later), -89);
    }
}
