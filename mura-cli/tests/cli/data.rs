//! The data commands: stats, split, check, synth, augment-preview, bench pipeline, and bad data.

use super::*;

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
