//! The `tfe-oidc` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use tfe_oidc::cli::{self, Cli};

fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(cli) => cli::run(cli),
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            ExitCode::from(cli::EXIT_USAGE)
        }
        Err(e) => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
    }
}
