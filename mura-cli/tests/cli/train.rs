//! Training, evaluation, prediction and the demo from the command line, and their bad inputs.

use super::*;

#[test]
fn a_pretrained_tag_not_in_the_cache_names_the_fetch_command() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path(), 20);
    let o = Command::new(env!("CARGO_BIN_EXE_mura"))
        .args([
            "train",
            "--data",
            root.to_str().unwrap(),
            "--model",
            "densenet201",
            "--pretrained",
            "densenet201.tv_in1k",
            "--out",
            dir.path().join("runs").to_str().unwrap(),
        ])
        .env("HF_HOME", dir.path().join("hf"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("cargo xtask fetch-weights densenet201.tv_in1k"),
        "{err}"
    );
    fails_with(
        &[
            "train",
            "--data",
            root.to_str().unwrap(),
            "--pretrained",
            "no-such.safetensors",
            "--out",
            dir.path().join("runs2").to_str().unwrap(),
        ],
        "not a known tag",
    );
}

#[test]
fn bench_model_reports_the_peers_json_fields() {
    let o = mura(&[
        "bench",
        "model",
        "custom-cnn",
        "--mode",
        "train",
        "--batch",
        "2",
        "--image-size",
        "64",
        "--iters",
        "1",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(json["images_per_sec"].as_f64().unwrap() > 0.0);
    assert!(json["peak_rss_mb"].as_f64().unwrap() > 0.0);
    assert_eq!(json["threads"], 1);
    assert_eq!(json["mode"], "train");
    assert_eq!(json["batch"], 2);
    let forced = std::env::var("MURA_KERNELS").is_ok_and(|v| v == "generic");
    assert_eq!(json["kernels"], if forced { "generic" } else { "cpu" });
    fails_with(&["bench", "model", "lenet"], "lenet");
    // MURA_KERNELS=generic turns the generic paths on, and the result says so.
    let o = Command::new(env!("CARGO_BIN_EXE_mura"))
        .args([
            "bench",
            "model",
            "custom-cnn",
            "--batch",
            "2",
            "--image-size",
            "64",
        ])
        .args(["--iters", "1", "--threads", "1", "--json"])
        .env("MURA_KERNELS", "generic")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["kernels"], "generic");
    fails_with(
        &["bench", "model", "custom-cnn", "--device", "cuda:0"],
        "no CUDA support",
    );
}

#[test]
fn train_evaluate_predict_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path(), 40);
    let runs = dir.path().join("runs");
    let o = mura(&[
        "train",
        "--data",
        root.to_str().unwrap(),
        "--model",
        "alexnet-style",
        "--image-size",
        "24",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "0.001",
        "--seed",
        "4",
        "--out",
        runs.to_str().unwrap(),
        "--name",
        "cli",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // One JSON object per epoch, then the summary.
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", stdout(&o));
    assert_eq!(lines[1]["epoch"], 2);
    assert_eq!(lines[2]["epochs_done"], 2);
    let run = runs.join("cli");
    let config = fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("arch = \"alexnet-style\""), "{config}");
    assert!(config.contains("input_size = 24"), "{config}");

    // The same name again is refused, nothing overwritten.
    let o = mura(&[
        "train",
        "--data",
        root.to_str().unwrap(),
        "--out",
        runs.to_str().unwrap(),
        "--name",
        "cli",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));

    let o = mura(&["evaluate", run.to_str().unwrap(), "--bootstrap", "50"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.contains("study level (test split"), "{table}");
    assert!(table.contains("AUC [95% CI]"), "{table}");
    assert!(run.join("study_predictions.csv").is_file());

    // Predict an image and a study folder.
    let study = fs::read_to_string(run.join("study_predictions.csv")).unwrap();
    let first = study.lines().nth(1).unwrap().split(',').next().unwrap();
    let folder = root.join(first);
    let image = fs::read_dir(&folder)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let o = mura(&[
        "predict",
        run.to_str().unwrap(),
        image.to_str().unwrap(),
        folder.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = json[1]["probability"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));
    assert!(!json[1]["images"].as_array().unwrap().is_empty());

    // A config with an unknown key names it, with its line.
    let bad = dir.path().join("bad.toml");
    fs::write(
        &bad,
        format!(
            "[data]\nroot = {:?}\n[model]\narch = \"custom-cnn\"\n[train]\nepochz = 3\n",
            root.to_str().unwrap()
        ),
    )
    .unwrap();
    let o = mura(&["train", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("epochz") && err.contains("bad.toml") && err.contains("line 6"),
        "{err}"
    );
    // Prediction on a missing run says so.
    let o = mura(&[
        "predict",
        dir.path().join("nope").to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("config.toml"), "{}", stderr(&o));
}

#[test]
fn demo_trains_evaluates_and_prints_the_study_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let args = [
        "demo",
        "--out",
        out.to_str().unwrap(),
        "--studies",
        "60",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--quiet",
    ];
    let o = mura(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("study level (test split"), "{text}");
    assert!(text.contains("demo done in"), "{text}");
    // One level: the data in OUT/data, the run in OUT/run, and the last line names it.
    let run = out.join("run");
    assert!(run.join("config.toml").is_file() && run.join("best.safetensors").is_file());
    assert!(out.join("data").join("MURA-v1.1").is_dir());
    let last = text.lines().last().unwrap();
    assert!(last.ends_with(run.to_str().unwrap()), "{last}");
    // Running it again reuses the data and replaces the run.
    let o = mura(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("using the synthetic data set"));
}

/// A bad value given by a flag names the flag (and the setting it sets); the message never starts
/// with an empty location.
#[test]
fn a_bad_flag_value_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("m");
    let out = dir.path().join("runs");
    for (flag, value, key) in [
        ("--batch-size", "0", "train.batch_size"),
        ("--epochs", "0", "train.epochs"),
    ] {
        let o = mura(&[
            "train",
            "--data",
            data.to_str().unwrap(),
            flag,
            value,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2));
        let err = stderr(&o);
        assert!(
            err.starts_with(&format!("error: {flag}: {key} must be at least 1")),
            "{err}"
        );
    }
    assert!(!out.exists(), "no run directory for a refused config");
}

#[test]
fn train_ranks_runs_data_parallel_and_refuses_more_ranks_than_images() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path(), 20);
    let runs = dir.path().join("runs");
    let train_with = |more: &[&str]| {
        let mut args = vec![
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
            "--out",
            runs.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        mura(&args)
    };
    let train = |ranks: &str| train_with(&["--ranks", ranks, "--name", "ranks"]);
    let o = train("9");
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.starts_with(
            "error: --ranks: train.data_parallel.ranks must be from 1 to train.batch_size (8), got 9"
        ),
        "{err}"
    );
    let o = train("2");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("data-parallel: 2 ranks"),
        "{}",
        stdout(&o)
    );
    let config = fs::read_to_string(runs.join("ranks/config.toml")).unwrap();
    assert!(
        config.contains("[train.data_parallel]\nranks = 2\nsync_batch_norm = false"),
        "{config}"
    );
    // Synchronised BatchNorm: said, and kept in the run's configuration.
    let o = train_with(&["--ranks", "2", "--sync-batch-norm", "--name", "sync"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("BatchNorm statistics over every rank"),
        "{}",
        stdout(&o)
    );
    let config = fs::read_to_string(runs.join("sync/config.toml")).unwrap();
    assert!(config.contains("sync_batch_norm = true"), "{config}");
    // Without ranks there is nothing to synchronise, and nothing is written.
    let o = train_with(&["--sync-batch-norm", "--name", "alone"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: --sync-batch-norm: train.data_parallel.sync_batch_norm needs"),
        "{err}"
    );
    assert!(!runs.join("alone").exists());
}

/// `evaluate` and `predict` on a folder that is not a run say so, and name the run directory
/// inside it when there is exactly one (the `--out runs` mistake).
#[test]
fn a_folder_that_is_not_a_run_is_named_with_the_run_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    fs::create_dir_all(runs.join("d169")).unwrap();
    fs::write(runs.join("d169").join("config.toml"), "").unwrap();
    let image = dir.path().join("x.png");
    fs::write(&image, b"").unwrap();
    for args in [
        vec!["evaluate", runs.to_str().unwrap()],
        vec!["predict", runs.to_str().unwrap(), image.to_str().unwrap()],
    ] {
        let o = mura(&args);
        assert_eq!(o.status.code(), Some(2));
        let err = stderr(&o);
        assert!(
            err.contains("is not a run or ensemble directory")
                && err.contains(runs.join("d169").to_str().unwrap()),
            "{err}"
        );
    }
    // Two runs inside: none is named.
    fs::create_dir_all(runs.join("r50")).unwrap();
    fs::write(runs.join("r50").join("config.toml"), "").unwrap();
    let o = mura(&["evaluate", runs.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(
        err.contains("is not a run") && !err.contains("the run directory in it"),
        "{err}"
    );
}
