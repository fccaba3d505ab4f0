//! Benchmarks: indexing a 40,005-entry CSV index (target: under 2 s) and loader throughput in
//! images/s on 1 and 2 threads over synthetic 512-px PNGs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mura_data::synth::{SynthConfig, generate, write_official_csvs};
use mura_data::{IndexOptions, Loader, LoaderConfig, index};

fn bench_index(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    write_official_csvs(dir.path()).unwrap();
    let options = IndexOptions {
        strict: false,
        check_files: false,
    };
    let n = index(dir.path(), &options).unwrap().dataset.len() as u64;
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    g.bench_function("official_counts_csv_40005_entries", |b| {
        b.iter(|| index(dir.path(), &options).unwrap())
    });
    g.finish();
}

fn bench_loader(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        &SynthConfig {
            studies: 40,
            seed: 1,
            ..SynthConfig::default()
        },
    )
    .unwrap();
    let indexed = index(dir.path(), &IndexOptions::default()).unwrap();
    let files: Vec<_> = indexed
        .dataset
        .images()
        .iter()
        .map(|r| r.file(indexed.dataset.base()))
        .collect();
    let mut g = c.benchmark_group("loader_decode_512px_png");
    g.throughput(Throughput::Elements(files.len() as u64));
    g.sample_size(10);
    for threads in [1, 2] {
        let loader = Loader::new(
            files.clone(),
            LoaderConfig {
                threads,
                ..LoaderConfig::default()
            },
        )
        .unwrap();
        g.bench_function(format!("threads_{threads}"), |b| {
            b.iter(|| {
                loader
                    .epoch(0)
                    .map(|s| s.unwrap().value.pixels.len())
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_index, bench_loader);
criterion_main!(benches);
