//! Data-parallel steps over in-process ranks: 2 and 4 ranks, each a replica taking its shard of
//! every batch, end with the same weights as one process training on the whole batches.
//! Tolerance: |ranks − one process| ≤ 1e-5 · max(1, |w|) per weight after 3 SGD steps (f32 sums
//! of the gradient pieces in another order); the replicas agree with each other bit for bit.
//! With synchronised BatchNorm, a BatchNorm model's weights and running statistics are within
//! 1e-5 · max(1, |w|) of one process's (measured ≤ 1.2e-7: candle's f32 ops over the ranks
//! against the fused kernel's f64 sums), where per-rank statistics part by 4e-3 to 8e-3.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use mura_models::{Arch, CnnConfig, Model, ModelConfig, Readout};
use mura_train::epoch::{Batch, train_epoch};
use mura_train::optim::{Optim, OptimizerConfig};
use mura_train::parallel::{AllReduce, Rank, ThreadGroup, broadcast_weights, parallel_step, shard};

const STEPS: usize = 3;
const BATCH: usize = 8;

fn config(batch_norm: bool) -> ModelConfig {
    ModelConfig {
        input_size: Some(16),
        cnn: Some(CnnConfig {
            blocks: 2,
            filters: 4,
            input_size: 16,
            batch_norm,
            readout: Readout::GlobalAvg,
            dense: vec![8],
            dropout: 0.0,
            spatial_dropout: 0.0,
            pool_after: vec![],
            ..CnnConfig::custom_cnn()
        }),
        ..ModelConfig::new(Arch::CustomCnn)
    }
}

/// Step `k`'s global batch: seeded pixels, alternating labels, weights 1 and 2.
fn batch(k: usize, c: usize) -> Batch {
    let n = BATCH * c * 16 * 16;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * (k + 3)) as f32 * 0.0137).sin())
        .collect();
    let y: Vec<f32> = (0..BATCH).map(|i| ((i + k) % 2) as f32).collect();
    let w: Vec<f32> = (0..BATCH).map(|i| 1.0 + (i % 2) as f32).collect();
    let dev = Device::Cpu;
    Batch {
        x: Tensor::from_vec(x, (BATCH, c, 16, 16), &dev).unwrap(),
        y: Tensor::from_vec(y, (BATCH, 1), &dev).unwrap(),
        w: Tensor::from_vec(w, (BATCH, 1), &dev).unwrap(),
        indices: (0..BATCH).collect(),
        features: false,
    }
}

fn weights(optim: &Optim) -> Vec<f32> {
    optim
        .vars()
        .iter()
        .flat_map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

/// Plain SGD with momentum: unlike Adam's, its update grows with the gradient, so a gradient
/// summed at the wrong scale shows.
fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd {
        lr: 0.05,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    }
}

/// A replica built from `seed` with its optimiser.
fn replica(config: &ModelConfig, seed: u64) -> (Model, Optim) {
    replica_with(config, seed, sgd())
}

fn replica_with(config: &ModelConfig, seed: u64, opt: OptimizerConfig) -> (Model, Optim) {
    let (model, optim, _) = replica_and_vars(config, seed, opt);
    (model, optim)
}

fn replica_and_vars(
    config: &ModelConfig,
    seed: u64,
    opt: OptimizerConfig,
) -> (Model, Optim, VarMap) {
    let (model, varmap) = Model::with_seed(config, seed, &Device::Cpu).unwrap();
    let optim = Optim::new(opt, model.trainable_vars(&varmap))
        .unwrap()
        .with_l2(1e-3)
        .unwrap();
    (model, optim, varmap)
}

/// The BatchNorms' running means and variances, in name order.
fn running(varmap: &VarMap) -> Vec<f32> {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().filter(|n| n.contains("running_")).collect();
    names.sort();
    names
        .into_iter()
        .flat_map(|n| {
            data[n]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn one_process(config: &ModelConfig) -> Vec<f32> {
    one_process_on(config, &|k| batch(k, config.in_channels)).0
}

/// The trained weights and running statistics of one process.
fn one_process_on(
    config: &ModelConfig,
    make: &(dyn Fn(usize) -> Batch + Sync),
) -> (Vec<f32>, Vec<f32>) {
    let (model, mut optim, varmap) = replica_and_vars(config, 1, sgd());
    let batches = (0..STEPS).map(|k| Ok(make(k)));
    train_epoch(&model, &mut optim, batches, 5, 0).unwrap();
    (weights(&optim), running(&varmap))
}

/// Every rank's weights after the same steps; replicas start from other seeds and are made
/// equal by the broadcast from rank 0 (seed 1, as the one process).
fn ranks(config: &ModelConfig, world: usize) -> Vec<Vec<f32>> {
    ranks_on(config, world, false, &|k| batch(k, config.in_channels))
        .into_iter()
        .map(|(w, _)| w)
        .collect()
}

/// Every rank's weights and running statistics after the same steps.
fn ranks_on(
    config: &ModelConfig,
    world: usize,
    sync_batch_norm: bool,
    make: &(dyn Fn(usize) -> Batch + Sync),
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let group: Arc<dyn AllReduce> = Arc::new(ThreadGroup::new(world).unwrap());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let me = Rank {
                    group: Arc::clone(&group),
                    rank,
                    sync_batch_norm,
                };
                s.spawn(move || {
                    let seed = 1 + rank as u64 * 10;
                    let (model, mut optim, varmap) = replica_and_vars(config, seed, sgd());
                    broadcast_weights(&optim, me.group.as_ref(), rank, 0).unwrap();
                    for k in 0..STEPS {
                        model.set_seed(mura_train::epoch::step_seed(5, 0, k as u64));
                        let whole = make(k);
                        let b = shard(&whole, rank, me.group.world()).unwrap();
                        let (n, at) = (whole.indices.len(), (1, k as u64 + 1));
                        let out = parallel_step(&model, &mut optim, &b, n, &me, at).unwrap();
                        assert_eq!(out.probabilities.len(), b.indices.len());
                    }
                    (weights(&optim), running(&varmap))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The largest |a − b| / max(1, |b|).
fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0f32, f32::max)
}

#[test]
fn two_and_four_ranks_train_to_the_one_process_weights() {
    let config = config(false);
    let reference = one_process(&config);
    for world in [2, 4] {
        let all = ranks(&config, world);
        for w in &all[1..] {
            assert_eq!(w, &all[0], "{world} ranks: replicas differ");
        }
        let worst = all[0]
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{world} ranks: largest difference {worst}");
        // The steps did move the weights.
        let (_, start) = replica(&config, 1);
        assert_ne!(weights(&start), reference);
    }
}

#[test]
fn a_batch_smaller_than_the_ranks_leaves_a_rank_idle_and_the_result_unchanged() {
    let config = config(false);
    // Two images over three ranks: rank 2's shard is empty.
    let small = |k: usize| shard(&batch(k, config.in_channels), 0, 4).unwrap();
    assert_eq!(shard(&small(0), 2, 3).unwrap().indices.len(), 0);
    let (reference, _) = one_process_on(&config, &small);
    let all = ranks_on(&config, 3, false, &small);
    for (w, _) in &all {
        let worst = worst(w, &reference);
        assert!(worst <= 1e-5, "largest difference {worst}");
    }
}

#[test]
fn synchronised_batch_norm_trains_as_one_process() {
    let config = config(true);
    let whole = |k: usize| batch(k, config.in_channels);
    // Four images over five ranks: rank 4 runs a stand-in that counts for nothing.
    let small = |k: usize| shard(&batch(k, config.in_channels), 0, 2).unwrap();
    for (what, make, world) in [
        (
            "8 images, 2 ranks",
            &whole as &(dyn Fn(usize) -> Batch + Sync),
            2,
        ),
        ("8 images, 4 ranks", &whole, 4),
        ("4 images, 3 ranks", &small, 3),
        ("4 images, 5 ranks", &small, 5),
    ] {
        let (w_ref, r_ref) = one_process_on(&config, make);
        let all = ranks_on(&config, world, true, make);
        for (w, r) in &all {
            assert_eq!(w, &all[0].0, "{what}: replicas differ");
            assert_eq!(r, &all[0].1, "{what}: running statistics differ");
        }
        let (w, r) = &all[0];
        let (dw, dr) = (worst(w, &w_ref), worst(r, &r_ref));
        assert!(dw <= 1e-5, "{what}: weights differ by {dw}");
        assert!(dr <= 1e-5, "{what}: running statistics differ by {dr}");
        // Without synchronisation the same ranks part from one process far beyond that.
        let per_rank = ranks_on(&config, world, false, make);
        let apart = worst(&per_rank[0].0, &w_ref);
        assert!(
            apart > 1e-3,
            "{what}: per-rank statistics only {apart} away"
        );
    }
}

#[test]
fn batch_norm_replicas_stay_equal_with_per_rank_statistics() {
    // Each rank normalises with its own shard's statistics (as PyTorch's DDP does without
    // SyncBatchNorm), so the result is not the one-process one; the replicas still agree.
    let config = config(true);
    let all = ranks(&config, 2);
    assert_eq!(all[0], all[1]);
    assert!(all[0].iter().all(|v| v.is_finite()));
}

#[test]
fn shards_cover_the_batch_in_order() {
    let b = batch(0, 3);
    for world in [1, 3, 5] {
        let mut seen = Vec::new();
        for rank in 0..world {
            let s = shard(&b, rank, world).unwrap();
            assert_eq!(s.x.dim(0).unwrap(), s.indices.len());
            seen.extend(s.indices);
        }
        assert_eq!(seen, b.indices, "{world} ranks");
    }
    assert!(ThreadGroup::new(0).is_err());
}
