//! The standard `process_*` metrics of Prometheus client libraries, read from `/proc/self` at
//! scrape time: start time, CPU, memory and file descriptors. Off Linux, or when `/proc` cannot be
//! read, the samples that need it are left out.

use std::fmt::Write as _;

use super::family;

/// What `/proc/self/stat` says of this process.
struct Stat {
    cpu_ticks: u64,
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

impl Stat {
    fn read() -> Option<Stat> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold anything: count from after it.
        let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            cpu_ticks: field(14)? + field(15)?,
            start_ticks: field(22)?,
            virtual_bytes: field(23)?,
            resident_pages: field(24)?,
        })
    }
}

/// Unix time at which the machine booted (`btime` of `/proc/stat`).
fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

fn max_fds() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Appends the `process_*` families.
pub(super) fn render(out: &mut String) {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let stat = Stat::read();
    let mut sample = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        family(out, name, kind, help);
        if let Some(value) = value {
            let _ = writeln!(out, "{name} {value}");
        }
    };
    let start = stat
        .as_ref()
        .zip(boot_time())
        .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / ticks);
    sample(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        start,
    );
    sample(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        stat.as_ref().map(|s| s.cpu_ticks as f64 / ticks),
    );
    let page = rustix::param::page_size() as f64;
    sample(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size, in bytes.",
        stat.as_ref().map(|s| s.resident_pages as f64 * page),
    );
    sample(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size, in bytes.",
        stat.as_ref().map(|s| s.virtual_bytes as f64),
    );
    sample(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        open_fds().map(|n| n as f64),
    );
    sample(
        "process_max_fds",
        "gauge",
        "The limit on open file descriptors.",
        max_fds().map(|n| n as f64),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_are_read_from_proc_self() {
        let mut out = String::new();
        render(&mut out);
        let value = |name: &str| -> f64 {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no sample of {name} in\n{out}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(started <= now + 1.0 && started > now - 3600.0, "{started}");
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
    }
}
