//! Whole runs on a tiny synthetic MURA: the run directory, learning, interrupt and resume,
//! evaluation files, and the faults a run must refuse or survive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::Device;
use mura_models::{CnnConfig, ModelConfig};
use mura_train::policy::{Monitor, PlateauConfig};
use mura_train::run::{device, files};
use mura_train::{
    EarlyStoppingSettings, EvaluateOptions, FitEnd, FitOptions, RunConfig, Silent, TrainError,
    Weights, create_run_dir, evaluate, fit,
};

mod common;

use common::{config, diverging, new_run, sized, tensors};

#[test]
fn a_run_learns_and_leaves_a_complete_run_directory() {
    let mut c = sized("learn", 4, 96);
    c.train.l2 = 1e-4;
    c.train.plateau = Some(PlateauConfig {
        monitor: Monitor::ValLoss,
        factor: 0.2,
        patience: 2,
        cooldown: 0,
        min_lr: 1e-5,
        min_delta: 0.0,
    });
    let (_out, dir) = new_run(&c);
    let s = fit(&c, &dir, &FitOptions::default(), &mut Silent).unwrap();
    assert_eq!(s.epochs_done, 4);
    assert!(matches!(s.end, FitEnd::Finished(_)));
    for f in [
        files::CONFIG,
        files::SPLIT,
        files::HISTORY,
        files::BEST,
        files::LAST,
        files::METRICS,
        files::CURVES,
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    // No temporary file is left behind.
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!name.ends_with(".tmp"), "{name}");
    }
    let history = std::fs::read_to_string(dir.join(files::HISTORY)).unwrap();
    assert_eq!(history.lines().count(), 5, "{history}");
    let h = &s.history;
    let first = &h[0];
    let best_loss = h.iter().map(|r| r.val_loss).fold(f64::INFINITY, f64::min);
    let best_auc = h.iter().filter_map(|r| r.val_auc).fold(0.0, f64::max);
    assert!(best_loss < first.val_loss, "val loss never fell: {h:?}");
    assert!(best_auc > 0.62, "val AUC stayed near chance: {h:?}");
    assert!(h.last().unwrap().train_loss < first.train_loss, "{h:?}");
    // The config saved is the one that ran, with absolute paths, and reads back.
    let saved = RunConfig::load(&dir.join(files::CONFIG)).unwrap();
    assert_eq!(saved.train, c.train);
    assert!(saved.data.root.unwrap().is_absolute());

    // Evaluation writes re-scorable files.
    let ev = evaluate(
        &dir,
        EvaluateOptions {
            resamples: 200,
            ..EvaluateOptions::default()
        },
    )
    .unwrap();
    // No early stopping: the final weights are the best epoch's.
    assert_eq!(ev.weights, Weights::Best);
    let preds = std::fs::read_to_string(dir.join("predictions.csv")).unwrap();
    let mut lines = preds.lines();
    assert_eq!(lines.next(), Some("path,study,body_part,label,probability"));
    assert_eq!(lines.count(), ev.images.overall.report.n);
    let studies = std::fs::read_to_string(dir.join("study_predictions.csv")).unwrap();
    assert_eq!(
        studies.lines().next(),
        Some("study,body_part,label,probability")
    );
    assert_eq!(studies.lines().count() - 1, ev.studies.overall.report.n);
    let auc = ev.studies.overall.report.auc.unwrap();
    let ci = ev.studies.overall.intervals["auc"];
    assert!(ci.lower <= auc && auc <= ci.upper, "{ci:?} vs {auc}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(files::METRICS)).unwrap()).unwrap();
    assert!(metrics["training"]["epochs_done"].as_u64() == Some(4));
    assert!(metrics["evaluation_test"]["studies"]["overall"]["report"]["auc"].is_number());
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights_bit_for_bit() {
    let mut c = config("resume", 2);
    c.train.early_stopping = Some(EarlyStoppingSettings {
        monitor: Monitor::ValAuc,
        patience: 5,
        min_delta: 0.0,
        restore_best: true,
    });
    let (_a, whole) = new_run(&c);
    fit(&c, &whole, &FitOptions::default(), &mut Silent).unwrap();

    let (_b, cut) = new_run(&c);
    // Stop mid-epoch 1 (step 3 of 10), then again in epoch 2, then finish.
    for stop in [Some(3), Some(14), None] {
        let s = fit(
            &c,
            &cut,
            &FitOptions {
                stop_after_steps: stop,
                ..FitOptions::default()
            },
            &mut Silent,
        )
        .unwrap();
        if stop.is_some() {
            assert!(matches!(s.end, FitEnd::Interrupted { .. }), "{:?}", s.end);
        } else {
            assert!(matches!(s.end, FitEnd::Finished(_)), "{:?}", s.end);
        }
    }
    for f in [files::LAST, files::BEST] {
        let (x, y) = (tensors(&whole.join(f)), tensors(&cut.join(f)));
        assert_eq!(x.len(), y.len());
        for ((n, a), (m, b)) in x.iter().zip(&y) {
            assert_eq!(n, m);
            assert!(
                a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{f}: {n} differs after resuming"
            );
        }
    }
    let (hx, hy) = (
        std::fs::read_to_string(whole.join(files::HISTORY)).unwrap(),
        std::fs::read_to_string(cut.join(files::HISTORY)).unwrap(),
    );
    // Same losses and metrics; only the timing columns may differ.
    let strip = |h: &str| -> Vec<String> {
        h.lines()
            .map(|l| l.split(',').take(11).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(strip(&hx), strip(&hy));
    // A finished run resumed again does nothing more.
    let again = fit(&c, &cut, &FitOptions::default(), &mut Silent).unwrap();
    assert_eq!(again.epochs_done, 2);
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let mut c = config("nan", 3);
    c.train.optimizer = diverging();
    let (_out, dir) = new_run(&c);
    let err = fit(&c, &dir, &FitOptions::default(), &mut Silent).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::NonFinite { .. }), "{msg}");
    assert!(msg.contains("the loss became"), "{msg}");
    assert!(msg.contains("epoch 1, batch"), "{msg}");
    // The last checkpoint on disk is the last good one: it loads and every value is finite.
    for (name, values) in tensors(&dir.join(files::LAST)) {
        if name.starts_with("optim.") {
            continue; // the optimiser's state holds the (huge) learning rate itself
        }
        assert!(values.iter().all(|v| v.is_finite()), "{name} is not finite");
    }
}

#[test]
fn an_unwritable_run_directory_fails_before_training() {
    let c = config("nowrite", 1);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let err = create_run_dir(&c, &file).unwrap_err();
    assert!(matches!(err, TrainError::Unwritable { .. }), "{err}");
    assert!(err.to_string().contains("a-file"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
}

#[test]
fn an_existing_run_is_not_overwritten() {
    let c = config("twice", 1);
    let out = tempfile::tempdir().unwrap();
    let dir = create_run_dir(&c, out.path()).unwrap();
    // A run that never reached its first checkpoint (a wrong data root) can be started again.
    let mut wrong = c.clone();
    wrong.data.root = Some(out.path().join("no-such-root"));
    let wrong_dir = create_run_dir(&wrong, out.path()).unwrap();
    assert!(fit(&wrong, &wrong_dir, &FitOptions::default(), &mut Silent).is_err());
    assert_eq!(create_run_dir(&c, out.path()).unwrap(), dir);
    fit(&c, &dir, &FitOptions::default(), &mut Silent).unwrap();
    let before = std::fs::read(dir.join(files::CONFIG)).unwrap();
    let err = create_run_dir(&c, out.path()).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    assert_eq!(std::fs::read(dir.join(files::CONFIG)).unwrap(), before);
    assert!(dir.join(files::BEST).is_file());
}

#[test]
fn mismatched_pretrained_weights_are_refused_naming_the_tensors() {
    let mut c = config("mismatch", 1);
    // Weights of a different network: a 3-block CNN's checkpoint.
    let tmp = tempfile::tempdir().unwrap();
    let other = ModelConfig {
        cnn: Some(CnnConfig {
            blocks: 3,
            ..c.model.cnn.clone().unwrap()
        }),
        ..c.model.clone()
    };
    let (_, vars) = mura_models::Model::with_seed(&other, 0, &Device::Cpu).unwrap();
    let weights = tmp.path().join("other.safetensors");
    mura_models::checkpoint::save_atomic(&mura_models::checkpoint::varmap_tensors(&vars), &weights)
        .unwrap();
    c.pretrained = Some(mura_train::PretrainedConfig {
        weights: weights.clone(),
        skip_classifier: false,
        fold_first_conv: false,
    });
    let (_out, dir) = new_run(&c);
    let err = fit(&c, &dir, &FitOptions::default(), &mut Silent).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("other.safetensors"), "{msg}");
    assert!(msg.contains("blocks.3"), "{msg}");
    assert!(!dir.join(files::HISTORY).exists());
}

#[test]
fn run_configs_refuse_unknown_keys_and_bad_values_naming_them() {
    let good = config("toml", 2).to_toml().unwrap();
    assert_eq!(RunConfig::parse(&good).unwrap(), config("toml", 2));
    let typo = good.replace("batch_size", "batchsize");
    let err = RunConfig::parse(&typo).unwrap_err().to_string();
    assert!(err.contains("batchsize") && err.contains("line"), "{err}");
    let zero = good.replace("epochs = 2", "epochs = 0");
    let err = RunConfig::parse(&zero).unwrap_err().to_string();
    assert!(err.contains("train.epochs"), "{err}");
    for (from, to, named) in [
        (
            "checkpoint_minutes = 10.0",
            "checkpoint_minutes = -1.0",
            "checkpoint_minutes",
        ),
        (
            "checkpoint_minutes = 10.0",
            "checkpoint_minutes = nan",
            "checkpoint_minutes",
        ),
        (
            "[train]",
            "[train]\ncheckpoint_steps = 0",
            "checkpoint_steps",
        ),
    ] {
        assert!(good.contains(from), "{good}");
        let err = RunConfig::parse(&good.replace(from, to))
            .unwrap_err()
            .to_string();
        assert!(err.contains(named), "{to}: {err}");
    }
    assert!(good.contains("body_parts = []"), "{good}");
    let part = good.replace("body_parts = []", "body_parts = [\"knee\"]");
    let err = RunConfig::parse(&part).unwrap_err().to_string();
    assert!(err.contains("knee"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let err = RunConfig::load(&tmp.path().join("absent.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.toml"), "{err}");
}

#[test]
fn devices_parse_and_cuda_without_the_feature_says_how_to_get_it() {
    let cpu = device("cpu");
    assert!(matches!(cpu, Ok(Device::Cpu)));
    let err = device("gpu").unwrap_err().to_string();
    assert!(err.contains("cpu") && err.contains("cuda:N"), "{err}");
    if !cfg!(feature = "cuda") {
        let err = device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}

#[test]
fn two_stage_fine_tuning_trains_the_head_then_the_network_at_the_lower_rate() {
    let mut c = config("two-stage", 2);
    c.train.fine_tune = Some(mura_train::FineTune {
        head_epochs: 1,
        from: None,
        lr: 1e-4,
    });
    let (_out, dir) = new_run(&c);
    let (_, init) = mura_models::Model::with_seed(&c.model, c.seed, &Device::Cpu).unwrap();
    let init = mura_models::checkpoint::varmap_tensors(&init);
    let value =
        |t: &candle_core::Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let s = fit(
        &c,
        &dir,
        &FitOptions {
            // Stop after the first step of stage 1.
            stop_after_steps: Some(1),
            ..FitOptions::default()
        },
        &mut Silent,
    )
    .unwrap();
    assert!(matches!(s.end, FitEnd::Interrupted { .. }));
    // After a stage-1 step: the backbone is as initialised, the head moved.
    let after: std::collections::BTreeMap<String, Vec<f32>> =
        tensors(&dir.join(files::LAST)).into_iter().collect();
    let conv = "blocks.0.convs.0.conv.weight";
    assert!(init.contains_key(conv), "{:?}", init.keys());
    assert_eq!(after[conv], value(&init[conv]), "the frozen backbone moved");
    let head = init
        .keys()
        .find(|n| n.starts_with("head") && n.ends_with("weight"))
        .unwrap();
    assert_ne!(after[head], value(&init[head]), "the head did not train");
    let s = fit(&c, &dir, &FitOptions::default(), &mut Silent).unwrap();
    let stages: Vec<u32> = s.history.iter().map(|r| r.stage).collect();
    assert_eq!(stages, [0, 1]);
    assert_eq!(s.history[1].lr, 1e-4);
    let end: std::collections::BTreeMap<String, Vec<f32>> =
        tensors(&dir.join(files::LAST)).into_iter().collect();
    assert_ne!(
        end[conv],
        value(&init[conv]),
        "stage 2 did not train the backbone"
    );
}

/// Records the run's messages.
#[derive(Default)]
struct Messages(Vec<String>);

impl mura_train::Observer for Messages {
    fn message(&mut self, text: &str) {
        self.0.push(text.to_string());
    }
}

#[test]
fn a_frozen_backbone_trains_its_head_on_cached_features_with_the_same_result() {
    let mut c = config("cache", 2);
    c.train.freeze = mura_train::Freeze::Backbone;
    c.data.augment = mura_train::Augment::Preset(mura_augment::Preset::Eval);
    c.train.feature_cache = false;
    let (_a, plain) = new_run(&c);
    let mut said = Messages::default();
    let p = fit(&c, &plain, &FitOptions::default(), &mut said).unwrap();
    assert!(!said.0.iter().any(|m| m.contains("cached")), "{:?}", said.0);

    c.train.feature_cache = true;
    let (_b, cached) = new_run(&c);
    // Interrupted mid-epoch 2 and resumed: the cache follows the epoch's order from there.
    let mut said = Messages::default();
    let s = fit(
        &c,
        &cached,
        &FitOptions {
            stop_after_steps: Some(13),
            ..FitOptions::default()
        },
        &mut said,
    )
    .unwrap();
    assert!(matches!(s.end, FitEnd::Interrupted { .. }), "{:?}", s.end);
    assert!(
        said.0.iter().any(|m| m.contains("cached the features")),
        "{:?}",
        said.0
    );
    let q = fit(&c, &cached, &FitOptions::default(), &mut Silent).unwrap();
    assert_eq!(q.epochs_done, 2);
    // Same weights within 1e-4 (absolute, on values of order 0.1–1): features computed in other
    // batch groupings may differ in the last bits.
    for f in [files::LAST, files::BEST] {
        for ((n, a), (m, b)) in tensors(&plain.join(f))
            .iter()
            .zip(&tensors(&cached.join(f)))
        {
            assert_eq!(n, m);
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "{f}: {n} differs by {worst}");
        }
    }
    for (x, y) in p.history.iter().zip(&q.history) {
        assert!((x.val_loss - y.val_loss).abs() < 1e-5, "{x:?} vs {y:?}");
        assert!((x.train_loss - y.train_loss).abs() < 1e-5, "{x:?} vs {y:?}");
    }
}
