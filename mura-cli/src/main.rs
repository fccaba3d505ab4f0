//! The `mura` command line: parses arguments and calls the library crates. No logic lives here.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod commands;
mod compare_cmds;
mod train_cmds;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc keeps freed tensor buffers for reuse where glibc's malloc hands large blocks back to
/// the OS and page-faults them in again on every op; see [`mura_kernels::allocator`].
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    mura_kernels::allocator::keep_freed_pages();
    let cli = commands::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
