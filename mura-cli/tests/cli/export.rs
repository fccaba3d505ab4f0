//! `mura export`: a trained run to ONNX with its preprocessing, threshold and temperature in the
//! metadata; an architecture of the zoo with seeded weights; and each way it is refused.

use super::*;

fn metadata(report: &serde_json::Value) -> std::collections::HashMap<String, String> {
    report["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            let s = |i: usize| kv[i].as_str().unwrap().to_string();
            (s(0), s(1))
        })
        .collect()
}

#[test]
fn a_run_exports_with_its_preprocessing_and_is_refused_clearly_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path()).1;
    let out = dir.path().join("model.onnx");
    let o = mura(&[
        "export",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--with-features",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["outputs"],
        serde_json::json!(["logits", "probability", "features"])
    );
    assert_eq!(report["opset"], 17);
    assert_eq!(
        report["bytes"].as_u64().unwrap(),
        fs::metadata(&out).unwrap().len()
    );
    let meta = metadata(&report);
    assert_eq!(meta["mura.arch"], "alexnet-style");
    assert_eq!(meta["mura.input_size"], "24");
    assert_eq!(meta["mura.run"], "tiny");
    assert!(meta["mura.resize"].contains("mode"), "{meta:?}");
    let threshold: f64 = meta["mura.threshold"].parse().unwrap();
    assert!((0.0..=1.0).contains(&threshold));
    let t: f64 = meta["mura.temperature"].parse().unwrap();
    assert!(t > 0.0);
    let ops: Vec<&str> = report["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(ops.contains(&"Conv") && ops.contains(&"Sigmoid"), "{ops:?}");

    // An ensemble is refused, with its members named.
    let ens = dir.path().join("ens");
    fs::create_dir_all(&ens).unwrap();
    fs::write(
        ens.join("ensemble.toml"),
        format!("mode = \"mean\"\nmembers = [{:?}]\n", run.to_str().unwrap()),
    )
    .unwrap();
    let to = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    fails_with(
        &["export", ens.to_str().unwrap(), "--out", &to("e.onnx")],
        "export each member",
    );
    fails_with(
        &["export", ens.to_str().unwrap(), "--out", &to("e.onnx")],
        run.to_str().unwrap(),
    );
    // A run that has not finished an epoch.
    let fresh = dir.path().join("fresh");
    fs::create_dir_all(&fresh).unwrap();
    fs::copy(run.join("config.toml"), fresh.join("config.toml")).unwrap();
    fails_with(
        &["export", fresh.to_str().unwrap(), "--out", &to("f.onnx")],
        "has not finished an epoch",
    );
    // A folder that is not a run.
    fails_with(
        &[
            "export",
            dir.path().to_str().unwrap(),
            "--out",
            &to("g.onnx"),
        ],
        "is not a run or ensemble directory",
    );
    // An output path that cannot be written (below a file), and nothing left behind.
    let blocked = out.join("model.onnx");
    fails_with(
        &[
            "export",
            run.to_str().unwrap(),
            "--out",
            blocked.to_str().unwrap(),
        ],
        "cannot write",
    );
    assert!(out.is_file());
    // An operator set out of range.
    fails_with(
        &[
            "export",
            run.to_str().unwrap(),
            "--out",
            &to("h.onnx"),
            "--opset",
            "9",
        ],
        "opset 9 is not supported",
    );
    assert!(!dir.path().join("h.onnx").exists());
}

#[test]
fn an_architecture_exports_with_seeded_weights() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.onnx");
    let o = mura(&[
        "export",
        "--arch",
        "alexnet-style",
        "--image-size",
        "32",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("alexnet-style, opset 17"), "{text}");
    assert!(text.contains("mura.weights = seed 0"), "{text}");
    assert!(out.is_file());
    fails_with(
        &["export", "--arch", "lenet", "--out", out.to_str().unwrap()],
        "unknown architecture `lenet`",
    );
}
