//! End-to-end tests of the `mura` binary: each command on a synthetic tree, and one test per kind of
//! bad input showing the one-line message and exit status 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mura(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mura"))
        .args(args)
        .output()
        .expect("the mura binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A small synthetic tree with tiny images.
fn synth(dir: &Path, studies: usize) -> PathBuf {
    let out = dir.join("m");
    let o = mura(&[
        "synth",
        out.to_str().unwrap(),
        "--studies",
        &studies.to_string(),
        "--size",
        "24",
        "--seed",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// Runs `mura args` expecting failure: status 2 and one line on stderr containing `needle`.
fn fails_with(args: &[&str], needle: &str) {
    let o = mura(args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "{args:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn edit_line(path: &Path, line: usize, text: &str) {
    let content = fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = content.lines().map(String::from).collect();
    lines[line - 1] = text.to_string();
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn first_line(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn synth_stats_split_check_work_together() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path(), 2000);
    let root = root.to_str().unwrap();
    let o = mura(&["stats", root]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(
        table.contains("body part    label  images  percent"),
        "{table}"
    );
    for part in [
        "XR_ELBOW",
        "XR_FINGER",
        "XR_FOREARM",
        "XR_HAND",
        "XR_HUMERUS",
        "XR_SHOULDER",
        "XR_WRIST",
    ] {
        assert!(table.contains(part));
    }
    assert!(table.contains("views per study"));

    let o = mura(&["stats", root, "--json", "--sizes"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["source"], "csv");
    assert_eq!(
        json["stats"]["sizes"]["max_height"]
            .as_u64()
            .unwrap()
            .max(json["stats"]["sizes"]["max_width"].as_u64().unwrap()),
        24
    );

    let manifest = dir.path().join("split.csv");
    let o = mura(&[
        "split",
        root,
        "--out",
        manifest.to_str().unwrap(),
        "--val-fraction",
        "0.1",
        "--seed",
        "9",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = fs::read_to_string(&manifest).unwrap();
    assert!(text.lines().skip(1).any(|l| l.starts_with("val,")));
    assert!(text.lines().skip(1).any(|l| l.starts_with("test,")));

    let o = mura(&[
        "split",
        root,
        "--out",
        manifest.to_str().unwrap(),
        "--folds",
        "4",
        "--body-part",
        "wrist",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = fs::read_to_string(&manifest).unwrap();
    assert!(text.lines().skip(1).all(|l| l.contains(",XR_WRIST,")));
    assert!(text.lines().skip(1).any(|l| l.starts_with("train,3,")));

    let o = mura(&["check", root]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("all "));
}

#[test]
fn corrupt_png_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path(), 6);
    let listed = first_line(&root.join("MURA-v1.1/train_image_paths.csv"));
    let file = root.join(&listed);
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&["check", root.to_str().unwrap()], &listed);
}

#[test]
fn side_file_is_counted_and_refused_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path(), 6);
    let listed = first_line(&root.join("MURA-v1.1/train_image_paths.csv"));
    let side = root.join(&listed).with_file_name("._image1.png");
    fs::write(&side, b"\0\x05\x16\x07").unwrap();
    let mut csv = fs::read_to_string(root.join("MURA-v1.1/train_image_paths.csv")).unwrap();
    csv.push_str(&format!(
        "{}/._image1.png\n",
        listed.rsplit_once('/').unwrap().0
    ));
    fs::write(root.join("MURA-v1.1/train_image_paths.csv"), csv).unwrap();
    let o = mura(&["stats", root.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("skipped 1 entries: macOS ._ side file"),
        "{}",
        stderr(&o)
    );
    fails_with(
        &["stats", root.to_str().unwrap(), "--strict"],
        "--strict forbids skipping",
    );
}

#[test]
fn malformed_csv_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path(), 6);
    let csv = root.join("MURA-v1.1/train_image_paths.csv");
    edit_line(&csv, 2, "MURA-v1.1/train,\"unterminated");
    fails_with(
        &["stats", root.to_str().unwrap()],
        "train_image_paths.csv:2:",
    );
}

#[test]
fn label_disagreeing_with_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path(), 6);
    let csv = root.join("MURA-v1.1/train_labeled_studies.csv");
    let line = first_line(&csv);
    let (study, label) = line.rsplit_once(',').unwrap();
    let flipped = if label == "1" { "0" } else { "1" };
    edit_line(&csv, 1, &format!("{study},{flipped}"));
    fails_with(
        &["stats", root.to_str().unwrap()],
        &format!("train_labeled_studies.csv:1: study {study} is labelled"),
    );
}

#[test]
fn dotdot_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path(), 6);
    let csv = root.join("MURA-v1.1/train_image_paths.csv");
    edit_line(&csv, 1, "MURA-v1.1/train/../../secret.png");
    fails_with(
        &["stats", root.to_str().unwrap()],
        "train_image_paths.csv:1: \"MURA-v1.1/train/../../secret.png\" escapes the data root",
    );
}

#[test]
fn bad_arguments_and_missing_root_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        &["stats", dir.path().join("absent").to_str().unwrap()],
        "data root not found",
    );
    let root = synth(dir.path(), 6);
    let out = dir.path().join("s.csv");
    fails_with(
        &[
            "split",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--val-fraction",
            "1.5",
        ],
        "validation fraction",
    );
    fails_with(&["synth", root.to_str().unwrap()], "already exists");
    let o = mura(&[
        "split",
        root.to_str().unwrap(),
        "--out",
        "x.csv",
        "--body-part",
        "knee",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown body part"));
    let o = mura(&["--help"]);
    assert!(o.status.success());
    for cmd in ["stats", "split", "check", "synth", "demo"] {
        assert!(stdout(&o).contains(cmd), "--help lists {cmd}");
    }
}

#[test]
fn bench_pipeline_reports_json_and_preview_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path(), 10);
    let o = mura(&[
        "bench",
        "pipeline",
        root.to_str().unwrap(),
        "--threads",
        "2",
        "--size",
        "16",
        "--epochs",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(json["images_per_sec"].as_f64().unwrap() > 0.0);
    assert!(json["decode_images_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(json["threads"], 2);
    let png = dir.path().join("grid.png");
    let o = mura(&[
        "augment-preview",
        root.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
        "--size",
        "20",
        "--rows",
        "2",
        "--columns",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"));
    fails_with(
        &[
            "bench",
            "pipeline",
            root.to_str().unwrap(),
            "--threads",
            "0",
        ],
        "loader threads",
    );
}

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

mod model {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use mura_models::checkpoint;
    use mura_models::{Arch, Model, ModelConfig};

    #[test]
    fn list_shows_every_architecture_with_its_parameters() {
        let o = mura(&["model", "list"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        for arch in Arch::ALL {
            assert!(out.contains(arch.name()), "{arch} missing from\n{out}");
        }
        assert!(
            out.contains("6308609") && out.contains("densenet121.tv_in1k"),
            "{out}"
        );
    }

    #[test]
    fn summary_prints_the_layer_table() {
        let o = mura(&["model", "resnet18", "--summary", "--image-size", "64"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(
            out.contains("Total params: 11,177,025") && out.contains("layer4"),
            "{out}"
        );
        assert!(out.contains("GFLOPs"), "{out}");
        let o = mura(&["model", "resnet18", "--trainable-from", "layer9"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("no stage `layer9`"), "{}", stderr(&o));
        let o = mura(&["model", "resnet-18"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("known: custom-cnn"), "{}", stderr(&o));
    }

    /// `--check` passes a fitting checkpoint and lists every mismatch of a bad one; `--forward`
    /// writes the same logits the library computes.
    fn forward(weights: &Path, input: &Path, out: &Path) -> Output {
        mura(&[
            "model",
            "resnet18",
            "--weights",
            weights.to_str().unwrap(),
            "--forward",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    }

    #[test]
    fn check_and_forward_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let config = ModelConfig {
            input_size: Some(64),
            ..ModelConfig::new(Arch::ResNet18)
        };
        let (model, varmap) = Model::with_seed(&config, 4, &dev).unwrap();
        let mut tensors = checkpoint::varmap_tensors(&varmap);
        tensors.insert(
            "bn1.num_batches_tracked".into(),
            Tensor::zeros((), DType::I64, &dev).unwrap(),
        );
        let good = dir.path().join("good.safetensors");
        checkpoint::save_atomic(&tensors, &good).unwrap();
        let o = mura(&[
            "model",
            "resnet18",
            "--weights",
            good.to_str().unwrap(),
            "--check",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("fits resnet18"), "{}", stdout(&o));

        tensors.remove("fc.bias");
        tensors.insert(
            "layer1.0.conv1.weight".into(),
            Tensor::zeros((3, 3), DType::F32, &dev).unwrap(),
        );
        let bad = dir.path().join("bad.safetensors");
        checkpoint::save_atomic(&tensors, &bad).unwrap();
        let o = mura(&[
            "model",
            "resnet18",
            "--weights",
            bad.to_str().unwrap(),
            "--check",
        ]);
        assert_eq!(o.status.code(), Some(2));
        let out = stdout(&o);
        assert!(
            out.contains("missing `fc.bias`")
                && out.contains("`layer1.0.conv1.weight`: expected [64, 64, 3, 3], found [3, 3]"),
            "{out}"
        );
        assert!(
            stderr(&o).contains("2 tensor(s) at fault"),
            "{}",
            stderr(&o)
        );

        let x = Tensor::rand(0f32, 1f32, (2, 3, 64, 64), &dev).unwrap();
        let input = dir.path().join("in.safetensors");
        let mut m = std::collections::HashMap::new();
        m.insert("input".to_string(), x.clone());
        checkpoint::save_atomic(&m, &input).unwrap();
        let out = dir.path().join("out.safetensors");
        let o = forward(&good, &input, &out);
        assert!(o.status.success(), "{}", stderr(&o));
        let got = checkpoint::read_tensor(&out, "logits", &dev).unwrap();
        let want = model.forward(&x, false).unwrap();
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");

        // A gray input for an RGB model, and a file without `input`.
        m.insert(
            "input".to_string(),
            Tensor::zeros((1, 1, 64, 64), DType::F32, &dev).unwrap(),
        );
        checkpoint::save_atomic(&m, &input).unwrap();
        let o = forward(&good, &input, &out);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("N×3×224×224"), "{}", stderr(&o));
        let o = forward(&good, &good, &out);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("no tensor named `input`"),
            "{}",
            stderr(&o)
        );
    }
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
