//! `mura serve`: starts on the address asked for, prints it, answers; a folder that is not a run
//! and an address in use fail in one line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use super::*;

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serve_listens_where_asked_and_refuses_what_it_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = tiny_run(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_mura"))
        .args(["serve", run.to_str().unwrap(), "--addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    let health = get(&addr, "/healthz");
    let model = get(&addr, "/api/model");
    // An address in use.
    let o = mura(&["serve", run.to_str().unwrap(), "--addr", &addr]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains("\"ok\""),
        "{health}"
    );
    assert!(model.contains("\"name\":\"tiny\""), "{model}");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&o)
    );

    fails_with(&["serve", dir.path().to_str().unwrap()], "is not a run");
    let o = mura(&["serve", run.to_str().unwrap(), "--addr", "localhost"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid value 'localhost' for '--addr"));
}
