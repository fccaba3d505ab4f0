//! Data-parallel steps over in-process ranks: 2 and 4 ranks, each a replica taking its shard of
//! every batch, end with the same weights as one process training on the whole batches.
//! Tolerance: |ranks − one process| ≤ 1e-5 · max(1, |w|) per weight after 3 SGD steps (f32 sums
//! of the gradient pieces in another order); the replicas agree with each other bit for bit.

use candle_core::{Device, Tensor};
use mura_models::{Arch, CnnConfig, Model, ModelConfig, Readout};
use mura_train::epoch::{Batch, train_epoch};
use mura_train::optim::{Optim, OptimizerConfig};
use mura_train::parallel::{AllReduce, ThreadGroup, broadcast_weights, parallel_step, shard};

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
    let (model, varmap) = Model::with_seed(config, seed, &Device::Cpu).unwrap();
    let optim = Optim::new(opt, model.trainable_vars(&varmap))
        .unwrap()
        .with_l2(1e-3)
        .unwrap();
    (model, optim)
}

fn one_process(config: &ModelConfig) -> Vec<f32> {
    one_process_on(config, &|k| batch(k, config.in_channels))
}

fn one_process_on(config: &ModelConfig, make: &(dyn Fn(usize) -> Batch + Sync)) -> Vec<f32> {
    let (model, mut optim) = replica(config, 1);
    let batches = (0..STEPS).map(|k| Ok(make(k)));
    train_epoch(&model, &mut optim, batches, 5, 0).unwrap();
    weights(&optim)
}

/// Every rank's weights after the same steps; replicas start from other seeds and are made
/// equal by the broadcast from rank 0 (seed 1, as the one process).
fn ranks(config: &ModelConfig, world: usize) -> Vec<Vec<f32>> {
    ranks_on(config, world, &|k| batch(k, config.in_channels))
}

fn ranks_on(
    config: &ModelConfig,
    world: usize,
    make: &(dyn Fn(usize) -> Batch + Sync),
) -> Vec<Vec<f32>> {
    let group = ThreadGroup::new(world).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let group = &group;
                s.spawn(move || {
                    let (model, mut optim) = replica(config, 1 + rank as u64 * 10);
                    broadcast_weights(&optim, group, rank, 0).unwrap();
                    for k in 0..STEPS {
                        model.set_seed(mura_train::epoch::step_seed(5, 0, k as u64));
                        let whole = make(k);
                        let b = shard(&whole, rank, group.world()).unwrap();
                        let (n, at) = (whole.indices.len(), (1, k as u64 + 1));
                        let out =
                            parallel_step(&model, &mut optim, &b, n, group, rank, at).unwrap();
                        assert_eq!(out.probabilities.len(), b.indices.len());
                    }
                    weights(&optim)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
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
    let reference = one_process_on(&config, &small);
    let all = ranks_on(&config, 3, &small);
    for w in &all {
        let worst = w
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst <= 1e-5, "largest difference {worst}");
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
