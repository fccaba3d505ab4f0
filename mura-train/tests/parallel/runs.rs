//! Data-parallel runs (`train.data_parallel`) on a tiny synthetic MURA: ranks as threads of one
//! process train to the one-process weights, resume to the same bits, and stop cleanly on a
//! diverging step.
//!
//! Tolerance: with no BatchNorm, no dropout and average pools, every weight of a 2- or 3-rank
//! run is within 1e-5 · max(1, |w|) of the one-process run's after 9 Adam steps (f32 gradient
//! pieces summed in another order; measured 1.4e-6), the first epoch's losses within 1e-6.

use super::common::{config, diverging, new_run, tensors};
use mura_models::{LocalPool, Readout};
use mura_train::optim::OptimizerConfig;
use mura_train::run::files;
use mura_train::{DataParallel, FineTune, FitEnd, FitOptions, RunConfig, Silent, TrainError, fit};

fn ranked(name: &str, epochs: u32, ranks: usize) -> RunConfig {
    let mut c = config(name, epochs);
    c.train.data_parallel = (ranks > 1).then_some(DataParallel {
        ranks,
        sync_batch_norm: false,
    });
    c
}

/// No BatchNorm, no dropout: a model whose gradient does not depend on how a batch is cut.
fn exact(name: &str, ranks: usize) -> RunConfig {
    let mut c = ranked(name, 2, ranks);
    c.train.batch_size = 128;
    let cnn = c.model.cnn.as_mut().unwrap();
    cnn.batch_norm = false;
    cnn.dropout = 0.0;
    // Average pools: a max pool's gradient jumps to another pixel when rounding reorders two
    // nearly equal activations.
    cnn.pool = Some(LocalPool::Avg);
    cnn.readout = Readout::GlobalAvg;
    c
}

fn weights(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    tensors(&dir.join(files::LAST))
        .into_iter()
        .filter(|(n, _)| !n.starts_with("optim."))
        .collect()
}

#[test]
fn two_and_three_ranks_train_a_run_to_the_one_process_weights() {
    // 9 steps of 128 images: the 7 of epoch 1 (the last one of 122), its validation, and 2 of
    // epoch 2 (the replicas mirrored again at its start). Later steps are no test of the ranks:
    // Adam turns rounding-level differences in a near-zero gradient into whole steps, and from
    // about the 11th step the two runs part by 1e-3 whichever way the batch is cut.
    let options = FitOptions {
        stop_after_steps: Some(9),
        ..FitOptions::default()
    };
    let one = exact("one", 1);
    let (_a, dir) = new_run(&one);
    let reference = fit(&one, &dir, &options, &mut Silent).unwrap();
    let ref_weights = weights(&dir);
    // 128 images a batch: 64 + 64, and 43 + 43 + 42 (uneven shards).
    for ranks in [2, 3] {
        let c = exact("ranks", ranks);
        let (_b, d) = new_run(&c);
        let s = fit(&c, &d, &options, &mut Silent).unwrap();
        assert_eq!(s.end, FitEnd::Interrupted { epoch: 2, step: 2 });
        let worst = largest_difference(&weights(&d), &ref_weights);
        assert!(worst <= 1e-5, "{ranks} ranks: largest difference {worst}");
        let (r, o) = (&s.history[0], &reference.history[0]);
        assert!((r.train_loss - o.train_loss).abs() < 1e-6, "{r:?} vs {o:?}");
        assert!((r.val_loss - o.val_loss).abs() < 1e-6, "{r:?} vs {o:?}");
        assert_eq!(
            r.train_auc, o.train_auc,
            "the probabilities come back in batch order"
        );
    }
    // The steps did move the weights.
    let (_c, fresh) = new_run(&one);
    fit(
        &one,
        &fresh,
        &FitOptions {
            stop_after_steps: Some(1),
            ..FitOptions::default()
        },
        &mut Silent,
    )
    .unwrap();
    assert_ne!(weights(&fresh), ref_weights);
}

/// The largest |a − b| / max(1, |b|) over two runs' tensors.
fn largest_difference(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for ((n, x), (m, y)) in a.iter().zip(b) {
        assert_eq!(n, m);
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs() / q.abs().max(1.0));
        }
    }
    worst
}

#[test]
fn a_synchronised_batch_norm_run_trains_to_the_one_process_weights() {
    // BatchNorm after every convolution, statistics over both ranks' shards: the weights and
    // running statistics of 9 steps are one process's within 1e-4 (measured 1.1e-5; 1.2e-7
    // after one step); per-rank statistics part by 7e-3.
    let options = FitOptions {
        stop_after_steps: Some(9),
        ..FitOptions::default()
    };
    let with_bn = |name: &str, ranks: usize, sync_batch_norm: bool| {
        let mut c = exact(name, ranks);
        c.model.cnn.as_mut().unwrap().batch_norm = true;
        // Plain SGD: Adam's first steps move every weight by ±lr whatever its gradient, so a
        // bias before a BatchNorm (whose gradient is rounding noise about zero) would take a
        // whole step either way.
        c.train.optimizer = OptimizerConfig::Sgd {
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        };
        if let Some(d) = c.train.data_parallel.as_mut() {
            d.sync_batch_norm = sync_batch_norm;
        }
        c
    };
    let trained = |c: &RunConfig| {
        let (out, dir) = new_run(c);
        fit(c, &dir, &options, &mut Silent).unwrap();
        (out, weights(&dir))
    };
    let (_a, one) = trained(&with_bn("one-bn", 1, false));
    assert!(one.iter().any(|(n, _)| n.ends_with("running_var")));
    let (_b, synced) = trained(&with_bn("sync-bn", 2, true));
    let worst = largest_difference(&synced, &one);
    assert!(worst <= 1e-4, "synchronised: largest difference {worst}");
    let (_c, per_rank) = trained(&with_bn("per-rank-bn", 2, false));
    let apart = largest_difference(&per_rank, &one);
    assert!(apart > 1e-3, "per-rank statistics only {apart} away");
}

#[test]
fn an_interrupted_data_parallel_run_resumes_to_the_same_weights_bit_for_bit() {
    // BatchNorm and dropout: per-rank statistics and per-rank dropout seeds, all from the seed;
    // the head alone in epoch 1, the whole network in epoch 2 (the workers follow the stage).
    let mut c = ranked("resume-ranks", 2, 2);
    c.train.fine_tune = Some(FineTune {
        head_epochs: 1,
        from: None,
        lr: 1e-3,
    });
    let (_a, whole) = new_run(&c);
    fit(&c, &whole, &FitOptions::default(), &mut Silent).unwrap();
    let (_b, cut) = new_run(&c);
    for stop in [Some(3), Some(14), None] {
        let options = FitOptions {
            stop_after_steps: stop,
            ..FitOptions::default()
        };
        let s = fit(&c, &cut, &options, &mut Silent).unwrap();
        assert_eq!(stop.is_none(), matches!(s.end, FitEnd::Finished(_)));
    }
    for f in [files::LAST, files::BEST] {
        let (x, y) = (tensors(&whole.join(f)), tensors(&cut.join(f)));
        assert_eq!(x.len(), y.len());
        for ((n, a), (_, b)) in x.iter().zip(&y) {
            let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{f}: {n} differs after resuming");
        }
    }
}

#[test]
fn a_diverging_data_parallel_run_stops_on_every_rank_before_the_step() {
    let mut c = ranked("nan-ranks", 2, 2);
    c.train.optimizer = diverging();
    let (_out, dir) = new_run(&c);
    let err = fit(&c, &dir, &FitOptions::default(), &mut Silent).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::NonFinite { .. }), "{msg}");
    assert!(
        msg.contains("became") && msg.contains("epoch 1, batch"),
        "{msg}"
    );
    for (name, values) in weights(&dir) {
        assert!(values.iter().all(|v| v.is_finite()), "{name} is not finite");
    }
}

#[test]
fn ranks_beyond_the_batch_are_refused_naming_the_setting() {
    let mut c = ranked("too-many", 1, 17);
    let msg = c.check().unwrap_err().to_string();
    assert!(msg.contains("train.data_parallel.ranks"), "{msg}");
    assert!(msg.contains("17"), "{msg}");
    c.train.data_parallel = Some(DataParallel {
        ranks: 0,
        sync_batch_norm: false,
    });
    assert!(c.check().is_err());
    // One rank has nothing to synchronise with.
    c.train.data_parallel = Some(DataParallel {
        ranks: 1,
        sync_batch_norm: true,
    });
    let msg = c.check().unwrap_err().to_string();
    assert!(
        msg.contains("sync_batch_norm needs more than one rank"),
        "{msg}"
    );
}
