//! End-to-end tests of the `mura` binary: each command on a synthetic tree, and one test per kind of
//! bad input showing the one-line message and exit status 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;
mod data;
mod dicom;
mod export;
mod model;
mod serve;
mod train;

pub use std::fs;
pub use std::path::{Path, PathBuf};
pub use std::process::{Command, Output};

fn mura(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mura"))
        .args(args)
        .output()
        .expect("the mura binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A small synthetic tree with tiny images.
fn synth(dir: &Path, studies: usize) -> PathBuf {
    let out = dir.join("m");
    let o = mura(&[
        "synth",
        out.to_str().unwrap(),
        "--studies",
        &studies.to_string(),
        "--size",
        "24",
        "--seed",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// A one-epoch run of the AlexNet-style CNN at 24 px on a synthetic tree under `dir`: the
/// tree's root and the run.
fn tiny_run(dir: &Path) -> (PathBuf, PathBuf) {
    let root = synth(dir, 24);
    let runs = dir.join("runs");
    let o = mura(&[
        "train",
        "--data",
        root.to_str().unwrap(),
        "--model",
        "alexnet-style",
        "--image-size",
        "24",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--seed",
        "5",
        "--out",
        runs.to_str().unwrap(),
        "--name",
        "tiny",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    (root, runs.join("tiny"))
}

/// Runs `mura args` expecting failure: status 2 and one line on stderr containing `needle`.
fn fails_with(args: &[&str], needle: &str) {
    let o = mura(args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "{args:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn edit_line(path: &Path, line: usize, text: &str) {
    let content = fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = content.lines().map(String::from).collect();
    lines[line - 1] = text.to_string();
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn first_line(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string()
}
