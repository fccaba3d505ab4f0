//! The `mura` command line: parses arguments and calls the library crates. No logic lives here.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod commands;
mod compare_cmds;
mod train_cmds;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
