//! What the server tests share: one tiny trained run on a synthetic MURA, and upload bodies.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mura_data::synth::{Difficulty, SynthConfig, generate};
use mura_models::Arch;
use mura_train::{DataConfig, FitOptions, RunConfig, Silent, create_run_dir};

/// The synthetic tree and a one-epoch AlexNet-style run at 32 px trained on it.
pub fn run() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("m");
        let synth = SynthConfig {
            studies: 40,
            seed: 2,
            max_side: 96,
            valid_fraction: 0.25,
            odd_format_fraction: 0.0,
            difficulty: Difficulty::Easy,
        };
        generate(&data, &synth).unwrap();
        let mut c = RunConfig::defaults(Arch::from_name("alexnet-style").unwrap());
        c.name = Some("tiny".into());
        c.data = DataConfig::new(Some(data.clone()));
        c.model.input_size = Some(32);
        c.train.epochs = 1;
        c.train.batch_size = 8;
        let run = create_run_dir(&c, &dir.path().join("runs")).unwrap();
        mura_train::train(&c, &run, &FitOptions::default(), &mut Silent).unwrap();
        (dir, data, run)
    })
}

/// The first PNG under `dir`, in name order.
pub fn first_png(dir: &Path) -> PathBuf {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "png") {
                all.push(p);
            }
        }
    }
    all.sort();
    all.remove(0)
}

pub const BOUNDARY: &str = "mura-test-boundary-7f3a";

/// A multipart body of `files` (name, bytes) and extra text fields.
pub fn multipart(files: &[(&str, &[u8])], fields: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend(b"\r\n");
    }
    for (name, value) in fields {
        body.extend(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

pub fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// A server on 127.0.0.1 (a free port) in a thread of its own; dropping it stops the server.
pub struct Server {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(app: axum::Router) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let stop = async move {
                    let _ = stop_rx.await;
                };
                mura_serve::serve_on(listener, app, stop).await.unwrap();
            });
        });
        Server {
            addr: addr_rx.recv().unwrap(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
