//! A bounded load test on 127.0.0.1: concurrent clients post studies to a real server for a
//! fixed number of requests; every request succeeds (a client turned away with 429 waits its
//! Retry-After share and tries again), latencies and throughput are printed, and the process's
//! resident memory does not grow from one round to the next.

use std::time::{Duration, Instant};

use super::common::{Server, content_type, first_png, multipart, run};
use mura_serve::{EngineOptions, ServeOptions};

const CLIENTS: usize = 4;
const REQUESTS: usize = 10;
const VIEWS: usize = 3;

/// Resident memory of this process, in kB (Linux).
fn rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One round: every client posts REQUESTS studies; (latencies, 429s, seconds).
fn round(url: &str, body: &[u8]) -> (Vec<Duration>, usize, f64) {
    let t = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(|| {
                    let (mut lat, mut busy) = (Vec::new(), 0);
                    for _ in 0..REQUESTS {
                        let start = Instant::now();
                        loop {
                            let r = ureq::post(url)
                                .set("Content-Type", &content_type())
                                .send_bytes(body);
                            match r {
                                Ok(resp) => {
                                    let v: serde_json::Value =
                                        serde_json::from_reader(resp.into_reader()).unwrap();
                                    assert_eq!(v["images"].as_array().unwrap().len(), VIEWS);
                                    break;
                                }
                                Err(ureq::Error::Status(429, resp)) => {
                                    assert_eq!(resp.header("Retry-After"), Some("1"));
                                    busy += 1;
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                                Err(e) => panic!("request failed: {e}"),
                            }
                        }
                        lat.push(start.elapsed());
                    }
                    (lat, busy)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy = results.iter().map(|r| r.1).sum();
    let lat = results.into_iter().flat_map(|r| r.0).collect();
    (lat, busy, t.elapsed().as_secs_f64())
}

#[test]
fn concurrent_clients_are_all_served_with_flat_memory() {
    let options = ServeOptions {
        engine: EngineOptions {
            queue: 2,
            ..ServeOptions::default().engine
        },
        ..ServeOptions::default()
    };
    let app = mura_serve::app(&run().2, &options).unwrap();
    let server = Server::start(app);
    let addr = server.addr;
    assert!(addr.ip().is_loopback());
    let url = format!("http://{addr}/api/predict?cam=0");
    let png = std::fs::read(first_png(&run().1)).unwrap();
    let body = multipart(&[("a.png", png.as_slice()); VIEWS], &[]);

    round(&url, &body); // warm-up: allocator pools, the model's buffers
    let before = rss_kb();
    let mut all = Vec::new();
    let (mut busy, mut seconds) = (0, 0.0);
    for _ in 0..3 {
        let (lat, b, s) = round(&url, &body);
        all.extend(lat);
        busy += b;
        seconds += s;
    }
    let after = rss_kb();
    all.sort();
    let pct = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    let images = (all.len() * VIEWS) as f64;
    eprintln!(
        "{CLIENTS} clients × {REQUESTS} requests × 3 rounds of {VIEWS} views: p50 {:.1} ms, p99 {:.1} ms, {:.1} images/s, {busy} answered 429 and retried, RSS {before:?} → {after:?} kB",
        pct(0.5),
        pct(0.99),
        images / seconds
    );
    assert_eq!(all.len(), 3 * CLIENTS * REQUESTS);
    if let (Some(b), Some(a)) = (before, after) {
        assert!(a < b + 64 * 1024, "resident memory grew from {b} to {a} kB");
    }
    drop(server);
}
