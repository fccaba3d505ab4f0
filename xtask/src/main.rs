//! Project automation, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! Tasks:
//! - `ci`: the checks CI runs (format, lints, tests), in the same order as `.ci/run`.
//! - `fetch-weights <tag>... | --all | --list`: ImageNet weights from the Hugging Face hub into the
//!   local hub cache (`HF_HOME`, `HF_ENDPOINT` honoured), verified and recorded in the lock file.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

fn cargo(args: &[&str]) -> Result<()> {
    println!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => {
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            cargo(&["test", "--workspace"])
        }
        Some("fetch-weights") => fetch_weights(&args[1..]),
        Some(other) => bail!("unknown task {other:?}; tasks: ci, fetch-weights"),
        None => {
            println!(
                "usage: cargo xtask <task>\n\ntasks:\n  ci    format check, clippy, tests (what .ci/run runs)\n  fetch-weights <tag>... | --all | --list    pretrained weights into the hub cache"
            );
            Ok(())
        }
    }
}

fn fetch_weights(args: &[String]) -> Result<()> {
    let registry = mura_models::hub::Registry::builtin()?;
    let fetcher = xtask::Fetcher::from_env();
    let tags: Vec<String> = match args {
        [] => bail!(
            "fetch-weights needs tags, --all or --list (known: {})",
            registry.tags().join(", ")
        ),
        [flag] if flag == "--list" => {
            for line in xtask::list(&registry, &fetcher.hub) {
                println!("{line}");
            }
            return Ok(());
        }
        [flag] if flag == "--all" => registry.tags().iter().map(|t| t.to_string()).collect(),
        tags => {
            if let Some(flag) = tags.iter().find(|t| t.starts_with('-')) {
                bail!("unknown flag {flag}; use tags, --all or --list");
            }
            tags.to_vec()
        }
    };
    for tag in &tags {
        let f = fetcher.fetch(&registry, tag)?;
        println!(
            "{tag}: verified {} tensors, {:.1} MB, sha256 {} -> {}",
            f.tensors,
            f.bytes as f64 / 1e6,
            f.sha256,
            f.path.display()
        );
    }
    Ok(())
}
