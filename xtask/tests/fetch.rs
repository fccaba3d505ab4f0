//! The real download code (hf-hub over HTTP) against a small hub on 127.0.0.1 started by the test:
//! it serves hub-shaped answers (`etag`, `x-repo-commit` and `Content-Range` on the `bytes=0-0`
//! metadata request, then the ranged body) for generated safetensors files. Success, 404, a
//! truncated body, wrong tensors, a changed digest, no server at all; and the `xtask` binary
//! honouring `HF_ENDPOINT` and `HF_HOME`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{Device, Tensor};
use mura_models::hub::{Hub, Registry};
use mura_models::{Arch, Model, ModelConfig, checkpoint};
use xtask::{FetchError, Fetcher};

const TAG: &str = "resnet18.tv_in1k";
const FILE: &str = "/timm/resnet18.tv_in1k/resolve/main/model.safetensors";

/// What the server answers for a path.
#[derive(Clone)]
struct Served {
    body: Arc<Vec<u8>>,
    etag: String,
    commit: String,
    /// Send only this many bytes of a download, then close (the headers promise all of them).
    cut_at: Option<usize>,
}

type Routes = Arc<Mutex<HashMap<String, Served>>>;

/// A hub on 127.0.0.1: its endpoint and the routes it serves (everything else is a 404).
fn serve() -> (String, Routes) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let routes: Routes = Arc::default();
    let r = Arc::clone(&routes);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let r = Arc::clone(&r);
            std::thread::spawn(move || answer(stream, &r));
        }
    });
    (endpoint, routes)
}

fn answer(mut stream: TcpStream, routes: &Routes) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
    // `Range: bytes=A-B` or `bytes=A-`.
    let mut range: Option<(usize, Option<usize>)> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let mut parts = v.trim().split('-');
            let a = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let b = parts.next().and_then(|s| s.parse().ok());
            range = Some((a, b));
        }
    }
    let served = routes.lock().unwrap().get(&path).cloned();
    let Some(s) = served else {
        let _ = stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        );
        return;
    };
    let size = s.body.len();
    let (from, to) = match range {
        Some((a, Some(b))) => (a.min(size), (b + 1).min(size)),
        Some((a, None)) => (a.min(size), size),
        None => (0, size),
    };
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{size}\r\n\
         etag: \"{}\"\r\nx-repo-commit: {}\r\nConnection: close\r\n\r\n",
        to - from,
        to.saturating_sub(1),
        s.etag,
        s.commit
    );
    let _ = stream.write_all(head.as_bytes());
    let probe = to - from <= 1;
    let stop = match s.cut_at {
        Some(cut) if !probe => (from + cut).min(to),
        _ => to,
    };
    let _ = stream.write_all(&s.body[from..stop]);
    let _ = stream.flush();
}

/// A timm-named resnet18 checkpoint with 1000 classes, initialised from `seed`.
fn resnet18(seed: u64) -> Vec<u8> {
    let config = ModelConfig {
        num_classes: 1000,
        ..ModelConfig::new(Arch::ResNet18)
    };
    let (_, varmap) = Model::with_seed(&config, seed, &Device::Cpu).unwrap();
    let tensors = checkpoint::varmap_tensors(&varmap);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    std::fs::read(path).unwrap()
}

fn good_file() -> Arc<Vec<u8>> {
    static FILE: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    Arc::clone(FILE.get_or_init(|| Arc::new(resnet18(1))))
}

fn route(routes: &Routes, body: Arc<Vec<u8>>, etag: &str, commit: &str, cut_at: Option<usize>) {
    routes.lock().unwrap().insert(
        FILE.into(),
        Served {
            body,
            etag: etag.into(),
            commit: commit.into(),
            cut_at,
        },
    );
}

const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn fetcher(endpoint: &str, cache: &Path) -> Fetcher {
    Fetcher {
        endpoint: endpoint.into(),
        hub: Hub::new(cache.join("hub")),
        progress: false,
    }
}

/// Every file under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn no_weights_left(cache: &Path) {
    let left: Vec<String> = files(cache)
        .into_iter()
        .filter(|f| f.contains("blobs") || f.contains("snapshots"))
        .collect();
    assert!(left.is_empty(), "left in the cache: {left:?}");
}

#[test]
fn a_fetch_downloads_verifies_and_locks_and_training_resolves_the_tag() {
    let (endpoint, routes) = serve();
    route(&routes, good_file(), "etag-a", COMMIT_A, None);
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(&endpoint, cache.path());
    let registry = Registry::builtin().unwrap();
    let got = f.fetch(&registry, TAG).unwrap();
    assert_eq!(got.bytes as usize, good_file().len());
    assert_eq!(std::fs::read(&got.path).unwrap(), *good_file());
    assert!(
        got.path
            .ends_with(format!("snapshots/{COMMIT_A}/model.safetensors"))
    );
    let locked = f.hub.locked(TAG).unwrap().unwrap();
    assert_eq!(locked.sha256, got.sha256);
    assert_eq!(locked.commit, COMMIT_A);
    // Training reads it back from the cache with no network, digest-checked.
    assert_eq!(f.hub.resolve(&registry, TAG).unwrap(), got.path);
    let (model, varmap) = Model::with_seed(
        &ModelConfig {
            in_channels: 1,
            ..ModelConfig::new(Arch::ResNet18)
        },
        0,
        &Device::Cpu,
    )
    .unwrap();
    let report = checkpoint::load(
        &model,
        &varmap,
        &got.path,
        mura_models::LoadOptions {
            skip_classifier: true,
            fold_first_conv: true,
            ignore_prefix: None,
        },
    )
    .unwrap();
    assert!(report.loaded > 50, "{report:?}");
    // Fetching again is a no-op that verifies again.
    assert_eq!(f.fetch(&registry, TAG).unwrap().sha256, got.sha256);
    assert!(
        xtask::list(&registry, &f.hub)
            .iter()
            .any(|l| l.contains(TAG) && l.contains("cached"))
    );
    // A file changed in the cache behind our back is refused at load time.
    let blob = std::fs::canonicalize(&got.path).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let err = f.hub.resolve(&registry, TAG).unwrap_err().to_string();
    assert!(
        err.contains("SHA-256") && err.contains(&got.sha256),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_a_404_that_names_the_url_and_leaves_nothing() {
    let (endpoint, _routes) = serve();
    let cache = tempfile::tempdir().unwrap();
    let err = fetcher(&endpoint, cache.path())
        .fetch(&Registry::builtin().unwrap(), TAG)
        .unwrap_err();
    assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("404") && msg.contains(FILE), "{msg}");
    no_weights_left(cache.path());
}

#[test]
fn a_truncated_download_fails_and_leaves_no_partial_file() {
    let (endpoint, routes) = serve();
    route(
        &routes,
        good_file(),
        "etag-t",
        COMMIT_A,
        Some(good_file().len() / 2),
    );
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(&endpoint, cache.path());
    let err = f.fetch(&Registry::builtin().unwrap(), TAG).unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Download { .. } | FetchError::Rejected { .. }
        ),
        "{err}"
    );
    no_weights_left(cache.path());
    assert!(f.hub.locked(TAG).unwrap().is_none());
}

#[test]
fn a_file_with_the_wrong_tensors_is_refused_naming_them() {
    let (endpoint, routes) = serve();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.safetensors");
    let t = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("fc.weight".to_string(), t)]), &wrong).unwrap();
    route(
        &routes,
        Arc::new(std::fs::read(&wrong).unwrap()),
        "etag-w",
        COMMIT_A,
        None,
    );
    let cache = tempfile::tempdir().unwrap();
    let err = fetcher(&endpoint, cache.path())
        .fetch(&Registry::builtin().unwrap(), TAG)
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::Rejected { .. }), "{msg}");
    assert!(
        msg.contains("fc.weight") && msg.contains("conv1.weight"),
        "{msg}"
    );
    no_weights_left(cache.path());
}

#[test]
fn a_file_whose_digest_changed_since_the_lock_is_refused_and_the_old_one_kept() {
    let (endpoint, routes) = serve();
    route(&routes, good_file(), "etag-a", COMMIT_A, None);
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(&endpoint, cache.path());
    let registry = Registry::builtin().unwrap();
    let first = f.fetch(&registry, TAG).unwrap();
    // The repository's main branch now holds other (valid) weights.
    route(&routes, Arc::new(resnet18(2)), "etag-b", COMMIT_B, None);
    let err = f.fetch(&registry, TAG).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("SHA-256") && msg.contains(&first.sha256),
        "{msg}"
    );
    assert!(
        !files(cache.path()).iter().any(|p| p.contains(COMMIT_B)),
        "{:?}",
        files(cache.path())
    );
    // The verified file is still what training gets.
    assert_eq!(f.hub.resolve(&registry, TAG).unwrap(), first.path);
    // A pinned digest in the registry is enforced too.
    let pinned = Registry::parse(&format!(
        "[[weights]]\ntag = \"{TAG}\"\nrepo = \"timm/{TAG}\"\narch = \"resnet18\"\nsha256 = \"{}\"\n",
        "0".repeat(64)
    ))
    .unwrap();
    let other = tempfile::tempdir().unwrap();
    route(&routes, good_file(), "etag-a", COMMIT_A, None);
    let err = fetcher(&endpoint, other.path())
        .fetch(&pinned, TAG)
        .unwrap_err()
        .to_string();
    assert!(err.contains("weights.toml"), "{err}");
    no_weights_left(other.path());
}

#[test]
fn no_server_is_a_clear_offline_message() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let err = fetcher(&format!("http://127.0.0.1:{port}"), cache.path())
        .fetch(&Registry::builtin().unwrap(), TAG)
        .unwrap_err();
    assert!(matches!(err, FetchError::Offline { .. }), "{err}");
    assert!(err.to_string().contains("cannot reach"), "{err}");
    no_weights_left(cache.path());
    let err = fetcher("http://127.0.0.1:1", cache.path())
        .fetch(&Registry::builtin().unwrap(), "vit_huge")
        .unwrap_err()
        .to_string();
    assert!(err.contains("vit_huge") && err.contains(TAG), "{err}");
}

#[test]
fn the_xtask_binary_honours_hf_endpoint_and_hf_home() {
    let (endpoint, routes) = serve();
    route(&routes, good_file(), "etag-a", COMMIT_A, None);
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(args)
            .env("HF_ENDPOINT", &endpoint)
            .env("HF_HOME", home.path())
            .output()
            .unwrap()
    };
    let o = run(&["fetch-weights", TAG]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("verified") && out.contains("sha256"), "{out}");
    assert!(home.path().join("hub/mura-weights.lock").is_file());
    let o = run(&["fetch-weights", "--list"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().count() >= 7, "{out}");
    assert!(
        out.contains("densenet169.tv_in1k") && out.contains("not cached"),
        "{out}"
    );
    let o = run(&["fetch-weights", "densenet169.tv_in1k"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("404") && err.lines().count() == 1, "{err}");
}
