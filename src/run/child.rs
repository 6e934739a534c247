//! COMMAND as a child process: its environment, the forwarding of signals to it, and its exit
//! status as `run`'s (128 + signal when a signal ended it).
//!
//! `run` handles every signal whose default action would end it and that another process sends
//! to ask it to stop (`HANDLED`): dying of one would leave the credential files on disk and the
//! Vault tokens alive. Each is passed on to COMMAND as it came, and `run` cleans up when COMMAND
//! ends. Not handled: SIGKILL and SIGSTOP (they cannot be), the signals the kernel raises for a
//! fault in `run` itself (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT: it could
//! not go on safely), SIGPIPE (ignored by the Rust runtime: a write to a closed pipe fails
//! instead), and the real-time signals.
//!
//! COMMAND stays in `run`'s process group, so that it keeps the terminal. A Ctrl-C (or Ctrl-\)
//! at that terminal reaches both already; forwarding it too would be a second interrupt, which
//! Terraform takes as "stop now, without cleaning up". So SIGINT and SIGQUIT are forwarded only
//! when `run` is not in the terminal's foreground process group.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;

use rustix::process::{Pid, Signal, kill_process};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::RunError;

/// The signals `run` handles (see the module's documentation).
const HANDLED: [Signal; 14] = [
    Signal::HUP,
    Signal::INT,
    Signal::QUIT,
    Signal::TERM,
    Signal::USR1,
    Signal::USR2,
    Signal::ALARM,
    Signal::VTALARM,
    Signal::PROF,
    Signal::XCPU,
    Signal::XFSZ,
    Signal::IO,
    Signal::POWER,
    Signal::STKFLT,
];

/// The handled signals, heard from before the exchange starts, so that one sent at any time
/// after is acted on (the credentials revoked) rather than ending `run` at once.
pub struct Signals {
    received: mpsc::UnboundedReceiver<Signal>,
}

impl Signals {
    /// Installs the handlers; within a Tokio runtime.
    pub fn new() -> std::io::Result<Signals> {
        let (sender, received) = mpsc::unbounded_channel();
        for number in HANDLED {
            let mut stream = signal(SignalKind::from_raw(number.as_raw()))?;
            let sender = sender.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() && sender.send(number).is_ok() {}
            });
        }
        Ok(Signals { received })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Signal {
        match self.received.recv().await {
            Some(signal) => signal,
            None => std::future::pending().await,
        }
    }
}

/// The exit status that stands for dying of `signal`.
pub fn status_of(signal: Signal) -> u8 {
    128u8.saturating_add(signal.as_raw() as u8)
}

/// Runs `command` with exactly `env` as its environment, forwarding signals; its exit status.
pub async fn run(
    command: &[OsString],
    env: Vec<(OsString, OsString)>,
    signals: &mut Signals,
) -> Result<u8, RunError> {
    let (program, args) = command.split_first().expect("clap requires COMMAND");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
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
            signal = signals.next() => forward(pid, signal),
        }
    }
}

fn forward(pid: Option<Pid>, signal: Signal) {
    if matches!(signal, Signal::INT | Signal::QUIT) && from_terminal() {
        return;
    }
    if let Some(pid) = pid
        && let Err(e) = kill_process(pid, signal)
    {
        tracing::warn!(error = %e, "cannot forward the signal to the command");
    }
}

/// Whether a SIGINT or SIGQUIT most likely came from the terminal: `run` is in its foreground group.
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
