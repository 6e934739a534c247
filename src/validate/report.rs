//! Checks and the report: what each check found, the verdict, and the two renderings (one line
//! per check in text, or one JSON object). The format is documented in the README and kept
//! stable: scripts may read either.

use serde::Serialize;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    /// Whether the check passed. A skipped check did not pass: it verified nothing.
    pub ok: bool,
    pub detail: String,
    /// What to change. Always present on a failure; on a pass it marks a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

impl Check {
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: true,
            detail: detail.into(),
            fix: None,
            skipped: false,
        }
    }

    /// A pass that deserves attention: `fix` says what to improve.
    pub fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            fix: Some(fix.into()),
            ..Check::pass(name, detail)
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
            skipped: false,
        }
    }

    fn skipped(name: &'static str, because: &str) -> Check {
        Check {
            name,
            ok: false,
            detail: format!("skipped: {because} failed"),
            fix: None,
            skipped: true,
        }
    }
}

/// Every check of one run, in the order they ran.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub issuer: String,
    pub ok: bool,
    pub checks: Vec<Check>,
    #[serde(skip)]
    pub expect_unreachable: bool,
}

impl Report {
    pub fn new(issuer: &str, expect_unreachable: bool) -> Report {
        Report {
            issuer: issuer.to_owned(),
            ok: true,
            checks: Vec::new(),
            expect_unreachable,
        }
    }

    pub fn push(&mut self, check: Check) {
        self.ok &= check.ok;
        self.checks.push(check);
    }

    /// Records `names` as skipped because the check `because` failed.
    pub fn skip(&mut self, names: &[&'static str], because: &str) {
        for name in names {
            self.push(Check::skipped(name, because));
        }
    }

    /// Whether the check `name` ran and passed.
    pub fn passed(&self, name: &str) -> bool {
        self.checks.iter().any(|c| c.name == name && c.ok)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// One line per check (`✓`/`✗`, name, detail, and ` — fix` when there is one), then a
    /// verdict line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = if c.ok { '✓' } else { '✗' };
            out.push_str(&format!("{mark} {:<16} {}", c.name, c.detail));
            if let Some(fix) = &c.fix {
                let label = if c.ok { "warning" } else { "fix" };
                out.push_str(&format!(" — {label}: {fix}"));
            }
            out.push('\n');
        }
        out.push_str(&self.verdict());
        out.push('\n');
        out
    }

    fn verdict(&self) -> String {
        let failed = self.checks.iter().filter(|c| !c.ok && !c.skipped).count();
        let skipped = self.checks.iter().filter(|c| c.skipped).count();
        match (self.ok, self.expect_unreachable) {
            (true, true) => "result: ok, the discovery listener is unreachable from here".into(),
            (true, false) => format!("result: ok, {} checks passed", self.checks.len()),
            (false, _) => format!("result: FAILED, {failed} failed, {skipped} skipped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_one_line_per_check_and_a_verdict() {
        let mut report = Report::new("https://x", false);
        report.push(Check::pass("issuer_url", "fine"));
        report.push(Check::fail("dns", "cannot resolve x", "add x to DNS"));
        report.skip(&["tcp"], "dns");
        let text = report.to_text();
        assert_eq!(
            text,
            "✓ issuer_url       fine\n\
             ✗ dns              cannot resolve x — fix: add x to DNS\n\
             ✗ tcp              skipped: dns failed\n\
             result: FAILED, 1 failed, 1 skipped\n"
        );
        assert!(!report.ok);
    }

    #[test]
    fn json_omits_absent_fix_and_false_skipped() {
        let mut report = Report::new("https://x", false);
        report.push(Check::pass("dns", "ip address"));
        report.skip(&["tcp"], "dns");
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"issuer": "https://x", "ok": false, "checks": [
                {"name": "dns", "ok": true, "detail": "ip address"},
                {"name": "tcp", "ok": false, "detail": "skipped: dns failed", "skipped": true},
            ]})
        );
    }
}
