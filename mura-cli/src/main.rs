//! The `mura` command line: parses arguments (`args/`), calls one library function per command
//! (`commands/`) and prints the result (`output.rs`). Errors are printed as one line with their
//! causes, and exit with status 2.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc keeps freed tensor buffers for reuse where glibc's malloc hands large blocks back to
/// the OS and page-faults them in again on every op; see [`mura_kernels::allocator`].
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    mura_kernels::allocator::keep_freed_pages();
    let cli = args::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
