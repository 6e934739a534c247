//! COMMAND as a child process: its environment, the forwarding of SIGINT and SIGTERM to it, and
//! its exit status as `run`'s (128 + signal when a signal ended it).
//!
//! COMMAND stays in `run`'s process group, so that it keeps the terminal. A Ctrl-C at that
//! terminal reaches both already; forwarding it too would be a second interrupt, which Terraform
//! takes as "stop now, without cleaning up". So a SIGINT is forwarded only when `run` is not in
//! the terminal's foreground process group.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;

use rustix::process::{Pid, Signal, kill_process};
use tokio::signal::unix::{SignalKind, signal};

use super::RunError;

/// SIGINT and SIGTERM, heard from before the exchange starts, so that one sent at any time
/// after is acted on (the credentials revoked) rather than ending `run` at once.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal: 2 (SIGINT) or 15 (SIGTERM).
    pub async fn next(&mut self) -> u8 {
        tokio::select! {
            _ = self.int.recv() => 2,
            _ = self.term.recv() => 15,
        }
    }
}

/// Runs `command` with `env` added, forwarding signals; its exit status.
pub async fn run(
    command: &[OsString],
    env: &[(String, String)],
    signals: &mut Signals,
) -> Result<u8, RunError> {
    let (program, args) = command.split_first().expect("clap requires COMMAND");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn()
        .map_err(|source| RunError::Spawn {
            command: program.to_string_lossy().into_owned(),
            source,
        })?;
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|source| RunError::Spawn {
                    command: program.to_string_lossy().into_owned(),
                    source,
                })?;
                return Ok(exit_code(status));
            }
            number = signals.next() => forward(pid, number),
        }
    }
}

fn forward(pid: Option<Pid>, number: u8) {
    let signal = match number {
        2 if from_terminal() => return,
        2 => Signal::INT,
        _ => Signal::TERM,
    };
    if let Some(pid) = pid
        && let Err(e) = kill_process(pid, signal)
    {
        tracing::warn!(error = %e, "cannot forward the signal to the command");
    }
}

/// Whether a SIGINT most likely came from the terminal: `run` is in its foreground group.
fn from_terminal() -> bool {
    let Ok(tty) = std::fs::File::open("/dev/tty") else {
        return false;
    };
    rustix::termios::tcgetpgrp(&tty).is_ok_and(|group| group == rustix::process::getpgrp())
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        (None, None) => 1,
    }
}
