//! The `mura` command line: parses arguments and calls the library crates. No logic lives here.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod commands;
mod compare_cmds;
mod train_cmds;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc keeps freed tensor buffers for reuse; glibc's malloc hands large blocks back to the
/// OS and page-faults them in again on every op (issue 7 measured 7 s of system time per two
/// ResNet-50 forwards).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v2's `mimalloc.h` (the sys crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed pages instead of purging them after mimalloc's default 10 ms: a training step frees
/// and reallocates the same few hundred MB every op, and purging them made mimalloc slower than
/// glibc (custom CNN training 1.50 img/s against glibc's 1.80; 2.25 without purging).
#[allow(unsafe_code)]
fn keep_freed_pages() {
    // SAFETY: `mi_option_set` writes one of mimalloc's global option slots; it takes no pointers
    // and is called once, before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

fn main() -> ExitCode {
    keep_freed_pages();
    let cli = commands::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
