//! Integration tests of mura-data: indexing real-layout trees (good and bad), statistics against
//! the official counts, splits, manifests, the loader and the synthetic generator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use mura_data::synth::{OFFICIAL_COUNTS, SynthConfig, generate, write_official_csvs};
use mura_data::{
    BodyPart, ColorMode, DataError, IndexOptions, IndexSource, Loader, LoaderConfig, Manifest,
    Role, SkipReason, Split, SplitConfig, balanced_weights, decode_file, index, k_fold,
    paper_weights, stats, train_val_test,
};

const CSV_ONLY: IndexOptions = IndexOptions {
    strict: false,
    check_files: false,
};

/// A tiny hand-made MURA tree: 3 patients, 4 studies, 6 images of 12×9 pixels, with CSVs.
fn tree(dir: &Path) -> PathBuf {
    let studies = [
        ("train", "XR_WRIST", 1, 1, true, 2),
        ("train", "XR_WRIST", 1, 2, false, 1),
        ("train", "XR_HAND", 2, 1, false, 2),
        ("valid", "XR_ELBOW", 3, 1, true, 1),
    ];
    let mut csv: BTreeMap<&str, (String, String)> = BTreeMap::new();
    for (split, part, patient, study, abnormal, views) in studies {
        let folder = format!(
            "MURA-v1.1/{split}/{part}/patient{patient:05}/study{study}_{}",
            if abnormal { "positive" } else { "negative" }
        );
        fs::create_dir_all(dir.join(&folder)).unwrap();
        let entry = csv.entry(split).or_default();
        entry
            .1
            .push_str(&format!("{folder}/,{}\n", u8::from(abnormal)));
        for v in 1..=views {
            let img = image::GrayImage::from_fn(12, 9, |x, y| image::Luma([(x * 20 + y) as u8]));
            img.save(dir.join(format!("{folder}/image{v}.png")))
                .unwrap();
            entry.0.push_str(&format!("{folder}/image{v}.png\n"));
        }
    }
    for (split, (images, labels)) in csv {
        fs::write(
            dir.join(format!("MURA-v1.1/{split}_image_paths.csv")),
            images,
        )
        .unwrap();
        fs::write(
            dir.join(format!("MURA-v1.1/{split}_labeled_studies.csv")),
            labels,
        )
        .unwrap();
    }
    dir.to_path_buf()
}

fn csv_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("MURA-v1.1").join(name)
}

/// Replaces line `line` (1-based) of a CSV.
fn set_line(path: &Path, line: usize, text: &str) {
    let content = fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = content.lines().map(String::from).collect();
    lines[line - 1] = text.to_string();
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn append_line(path: &Path, text: &str) {
    let mut content = fs::read_to_string(path).unwrap();
    content.push_str(text);
    content.push('\n');
    fs::write(path, content).unwrap();
}

#[test]
fn indexes_a_tree_from_its_csvs() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let indexed = index(&root, &IndexOptions::default()).unwrap();
    assert_eq!(indexed.source, IndexSource::Csv);
    assert!(indexed.skipped.is_empty());
    let d = &indexed.dataset;
    assert_eq!(d.len(), 6);
    let first = &d.images()[0];
    assert_eq!(first.split, Split::Train);
    assert_eq!(first.body_part, BodyPart::Hand);
    assert_eq!(first.patient, 2);
    assert_eq!((first.study, first.view, first.label), (1, 1, false));
    assert_eq!(d.studies().len(), 4);
    assert!(d.images().iter().all(|r| r.file(d.base()).is_file()));
    // The MURA-v1.1 folder itself is accepted as the root too.
    let inner = index(&root.join("MURA-v1.1"), &IndexOptions::default()).unwrap();
    assert_eq!(inner.dataset.images(), d.images());
}

#[test]
fn walking_the_folders_gives_the_same_index_as_the_csvs() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let from_csv = index(&root, &IndexOptions::default()).unwrap();
    for name in [
        "train_image_paths.csv",
        "train_labeled_studies.csv",
        "valid_image_paths.csv",
        "valid_labeled_studies.csv",
    ] {
        fs::remove_file(csv_path(&root, name)).unwrap();
    }
    let walked = index(&root, &IndexOptions::default()).unwrap();
    assert_eq!(walked.source, IndexSource::Walk);
    assert_eq!(walked.dataset.images(), from_csv.dataset.images());
}

#[test]
fn side_files_are_skipped_and_counted_or_refused_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let study = root.join("MURA-v1.1/train/XR_WRIST/patient00001/study1_positive");
    fs::write(study.join("._image1.png"), b"\0\x05\x16\x07").unwrap();
    fs::write(study.join(".DS_Store"), b"junk").unwrap();
    append_line(
        &csv_path(&root, "train_image_paths.csv"),
        "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/._image1.png",
    );
    let indexed = index(&root, &IndexOptions::default()).unwrap();
    assert_eq!(indexed.dataset.len(), 6, "nothing real was lost");
    assert_eq!(indexed.skip_counts(), vec![(SkipReason::SideFile, 1)]);
    let err = index(
        &root,
        &IndexOptions {
            strict: true,
            ..IndexOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(
        err,
        DataError::StrictSkip {
            reason: SkipReason::SideFile,
            ..
        }
    ));
    assert!(err.to_string().contains("train_image_paths.csv:6"), "{err}");

    // Walking counts both kinds.
    fs::remove_file(csv_path(&root, "train_image_paths.csv")).unwrap();
    for name in [
        "train_labeled_studies.csv",
        "valid_image_paths.csv",
        "valid_labeled_studies.csv",
    ] {
        fs::remove_file(csv_path(&root, name)).unwrap();
    }
    let walked = index(&root, &IndexOptions::default()).unwrap();
    assert_eq!(walked.dataset.len(), 6);
    assert_eq!(
        walked.skip_counts(),
        vec![(SkipReason::SideFile, 1), (SkipReason::DsStore, 1)]
    );
}

#[test]
fn malformed_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let csv = csv_path(&root, "train_image_paths.csv");
    set_line(
        &csv,
        3,
        "MURA-v1.1/train/XR_WRIST/patient00001/study2_negative/image1.png,extra",
    );
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(
        matches!(err, DataError::Malformed { line: 3, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("train_image_paths.csv:3:") && msg.contains("2"),
        "{msg}"
    );

    set_line(
        &csv,
        3,
        "MURA-v1.1/train/XR_WRIST/patient00001/studyX_negative/image1.png",
    );
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("train_image_paths.csv:3: study folder"),
        "{err}"
    );
}

#[test]
fn label_disagreeing_with_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let csv = csv_path(&root, "train_labeled_studies.csv");
    set_line(
        &csv,
        2,
        "MURA-v1.1/train/XR_WRIST/patient00001/study2_negative/,1",
    );
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelMismatch {
                line: 2,
                csv_label: 1,
                folder_label: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("train_labeled_studies.csv:2"));
    set_line(
        &csv,
        2,
        "MURA-v1.1/train/XR_WRIST/patient00001/study2_negative/,maybe",
    );
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(err.to_string().contains("neither 0 nor 1"), "{err}");
}

#[test]
fn paths_escaping_the_root_are_refused() {
    for bad in [
        "MURA-v1.1/train/../../../etc/passwd",
        "/etc/passwd",
        "MURA-v1.1/train/XR_HAND/patient00002/study1_negative/../../../../../x.png",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path());
        append_line(&csv_path(&root, "train_image_paths.csv"), bad);
        let err = index(&root, &IndexOptions::default()).unwrap_err();
        assert!(
            matches!(err, DataError::EscapesRoot { line: 6, .. }),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains("escapes the data root"));
    }
}

/// A 10 MB line in an index CSV or a manifest is refused by its line number once it passes
/// `MAX_LINE_BYTES`, so the CSV parser never buffers it whole.
#[test]
fn a_ten_megabyte_csv_line_is_refused_by_line() {
    let long = "x".repeat(10 << 20);
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let csv = csv_path(&root, "train_image_paths.csv");
    append_line(&csv, &long);
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Malformed { line: 6, .. }), "{msg}");
    assert!(
        msg.contains("train_image_paths.csv")
            && msg.contains(&format!("longer than {} bytes", mura_data::MAX_LINE_BYTES)),
        "{}",
        &msg[..msg.len().min(300)]
    );
    assert!(
        msg.len() < 500,
        "the message quotes the line: {} bytes",
        msg.len()
    );

    let dataset = index(&tree(tempfile::tempdir().unwrap().path()), &CSV_ONLY);
    let m = k_fold(&dataset.unwrap().dataset, 2, 0).unwrap();
    let manifest = dir.path().join("split.csv");
    m.save(&manifest).unwrap();
    set_line(&manifest, 3, &long);
    let err = Manifest::load(&manifest).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Malformed { line: 3, .. }), "{msg}");
    assert!(msg.contains("split.csv") && msg.len() < 500, "{msg}");
}

/// A link in the tree pointing outside the data set folder is refused naming the link and its
/// target, whether the tree is walked or read through its CSVs; a link within the tree is fine.
#[cfg(unix)]
#[test]
fn links_out_of_the_data_tree_are_refused() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.png");
    image::GrayImage::new(4, 4).save(&secret).unwrap();

    for walk in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path());
        let study = root.join("MURA-v1.1/train/XR_HAND/patient00002/study1_negative");
        if walk {
            for f in fs::read_dir(root.join("MURA-v1.1")).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "csv") {
                    fs::remove_file(f).unwrap();
                }
            }
        } else {
            append_line(
                &csv_path(&root, "train_image_paths.csv"),
                "MURA-v1.1/train/XR_HAND/patient00002/study1_negative/image3.png",
            );
        }
        // A link to a file inside the tree is indexed like the file.
        symlink(study.join("image1.png"), study.join("image3.png")).unwrap();
        let indexed = index(&root, &IndexOptions::default()).unwrap();
        assert_eq!(indexed.dataset.images().len(), 7, "walk: {walk}");

        fs::remove_file(study.join("image3.png")).unwrap();
        symlink(&secret, study.join("image3.png")).unwrap();
        let err = index(&root, &IndexOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::LinkEscapes { .. }), "{msg}");
        assert!(
            msg.contains("image3.png") && msg.contains("secret.png"),
            "walk: {walk}: {msg}"
        );
    }

    // A linked folder leading out of the tree is refused when walking.
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    for f in fs::read_dir(root.join("MURA-v1.1")).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "csv") {
            fs::remove_file(f).unwrap();
        }
    }
    symlink(outside.path(), root.join("MURA-v1.1/train/XR_FINGER")).unwrap();
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(
        matches!(err, DataError::LinkEscapes { .. }) && err.to_string().contains("XR_FINGER"),
        "{err}"
    );
}

#[test]
fn unknown_body_part_missing_image_and_unlabelled_study_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let csv = csv_path(&root, "train_image_paths.csv");
    append_line(
        &csv,
        "MURA-v1.1/train/XR_KNEE/patient00009/study1_negative/image1.png",
    );
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(matches!(&err, DataError::UnknownBodyPart { part, line: 6, .. } if part == "XR_KNEE"));

    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    fs::remove_file(root.join("MURA-v1.1/train/XR_HAND/patient00002/study1_negative/image2.png"))
        .unwrap();
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(
        matches!(err, DataError::MissingImage { line: 5, .. }),
        "{err:?}"
    );
    // A CSV-only index does not look for files.
    assert_eq!(index(&root, &CSV_ONLY).unwrap().dataset.len(), 6);

    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    set_line(
        &csv_path(&root, "train_labeled_studies.csv"),
        1,
        "MURA-v1.1/train/XR_WRIST/patient00007/study1_positive/,1",
    );
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::StudyNotLabelled { .. }), "{err:?}");
}

#[test]
fn missing_root_or_csv_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = index(&dir.path().join("nope"), &IndexOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::RootNotFound { .. }));
    let err = index(dir.path(), &IndexOptions::default()).unwrap_err();
    assert!(
        matches!(err, DataError::RootNotFound { .. }),
        "an empty folder is no MURA copy"
    );
    let root = tree(dir.path());
    fs::remove_file(csv_path(&root, "valid_labeled_studies.csv")).unwrap();
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(
        matches!(&err, DataError::MissingCsv { path } if path.ends_with("valid_labeled_studies.csv"))
    );
}

#[test]
fn official_counts_are_reproduced_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_official_csvs(dir.path()).unwrap();
    let indexed = index(dir.path(), &CSV_ONLY).unwrap();
    assert_eq!(indexed.dataset.len(), 36808 + 3197);
    let s = stats(&indexed.dataset);
    for (part, split, normal_studies, abnormal_studies, normal_images, abnormal_images) in
        OFFICIAL_COUNTS
    {
        let split_stats = s.splits.iter().find(|x| x.split == split).unwrap();
        let c = split_stats.parts[&part];
        assert_eq!(
            (
                c.normal_studies,
                c.abnormal_studies,
                c.normal_images,
                c.abnormal_images
            ),
            (
                normal_studies,
                abnormal_studies,
                normal_images,
                abnormal_images
            ),
            "{part} {split}"
        );
    }
    let train = s.splits[0].total();
    assert_eq!((train.normal_images, train.abnormal_images), (21935, 14873));
    assert_eq!(train.studies(), 13457);
    let valid = s.splits[1].total();
    assert_eq!((valid.images(), valid.studies()), (3197, 1199));
    // The seed reports' inspection table: hand is 26.77% abnormal.
    let table = s.to_string();
    assert!(
        table.contains("XR_HAND          1    1484    26.77"),
        "{table}"
    );

    let w = balanced_weights(indexed.dataset.split(Split::Train).images()).unwrap();
    assert!(
        (w.normal - 0.8390).abs() < 5e-5 && (w.abnormal - 1.2374).abs() < 5e-5,
        "{w:?}"
    );
    let paper = paper_weights(indexed.dataset.split(Split::Train).images()).unwrap();
    let hand = paper[&BodyPart::Hand];
    assert!((hand.abnormal - 4059.0 / 5543.0).abs() < 1e-12);
    assert!((hand.normal - 1484.0 / 5543.0).abs() < 1e-12);
}

/// Share of each stratum's official-train images in the given role.
fn role_fractions(m: &Manifest, role: Role) -> BTreeMap<(BodyPart, bool), f64> {
    let mut counts: BTreeMap<(BodyPart, bool), (usize, usize)> = BTreeMap::new();
    for e in m.entries.iter().filter(|e| e.record.split == Split::Train) {
        let c = counts.entry(e.record.stratum()).or_default();
        c.1 += 1;
        if e.role == role {
            c.0 += 1;
        }
    }
    counts
        .into_iter()
        .map(|(k, (n, t))| (k, n as f64 / t as f64))
        .collect()
}

fn assert_no_patient_in_two(m: &Manifest, key: impl Fn(&mura_data::ManifestEntry) -> String) {
    let mut seen: BTreeMap<(Split, u32), BTreeSet<String>> = BTreeMap::new();
    for e in &m.entries {
        seen.entry((e.record.split, e.record.patient))
            .or_default()
            .insert(key(e));
    }
    for (p, roles) in seen {
        assert_eq!(roles.len(), 1, "patient {p:?} is in {roles:?}");
    }
}

#[test]
fn splits_of_2000_synthetic_studies_are_grouped_and_stratified() {
    let dir = tempfile::tempdir().unwrap();
    let config = SynthConfig {
        studies: 2000,
        seed: 7,
        max_side: 16,
        ..SynthConfig::default()
    };
    generate(dir.path(), &config).unwrap();
    let dataset = index(dir.path(), &IndexOptions::default()).unwrap().dataset;
    for fraction in [0.2, 0.1] {
        let cfg = SplitConfig {
            val_fraction: fraction,
            seed: 3,
        };
        let m = train_val_test(&dataset, &cfg).unwrap();
        m.check_patients().unwrap();
        assert_no_patient_in_two(&m, |e| e.role.to_string());
        assert!(
            m.entries
                .iter()
                .all(|e| (e.record.split == Split::Valid) == (e.role == Role::Test))
        );
        for (stratum, f) in role_fractions(&m, Role::Val) {
            assert!(
                (f - fraction).abs() <= 0.02,
                "{stratum:?}: {f:.4} vs {fraction}"
            );
        }
        assert_eq!(
            m,
            train_val_test(&dataset, &cfg).unwrap(),
            "same seed, same split"
        );
        assert_ne!(
            m,
            train_val_test(&dataset, &SplitConfig { seed: 4, ..cfg }).unwrap()
        );
    }
    let folds = k_fold(&dataset, 5, 3).unwrap();
    assert_no_patient_in_two(&folds, |e| format!("{:?}", e.fold));
    for f in 0..5 {
        let as_val = folds.fold_as_val(f);
        as_val.check_patients().unwrap();
        for (stratum, share) in role_fractions(&as_val, Role::Val) {
            assert!(
                (share - 0.2).abs() <= 0.02,
                "fold {f} {stratum:?}: {share:.4}"
            );
        }
    }
    // Filtering by body part keeps only that part.
    let wrist = train_val_test(
        &dataset.body_parts(&[BodyPart::Wrist]),
        &SplitConfig::default(),
    )
    .unwrap();
    assert!(
        wrist
            .entries
            .iter()
            .all(|e| e.record.body_part == BodyPart::Wrist)
    );
    assert!(!wrist.entries.is_empty());
}

#[test]
fn manifest_round_trips_and_bad_manifests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let dataset = index(&root, &IndexOptions::default()).unwrap().dataset;
    let m = k_fold(&dataset, 2, 0).unwrap();
    let path = dir.path().join("split.csv");
    m.save(&path).unwrap();
    assert_eq!(Manifest::load(&path).unwrap(), m);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("role,fold,split,body_part,patient,study,view,label,path\n"));

    // Patient 1 has 3 images in one fold; moving one to another fold leaks the patient.
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let i = lines
        .iter()
        .position(|l| l.contains("patient00001"))
        .unwrap();
    let flipped = if lines[i].starts_with("train,0,") {
        "train,1,"
    } else {
        "train,0,"
    };
    lines[i] = format!("{flipped}{}", &lines[i][8..]);
    fs::write(&path, lines.join("\n")).unwrap();
    let err = Manifest::load(&path).unwrap_err();
    assert!(matches!(err, DataError::PatientLeak { .. }), "{err:?}");

    fs::write(&path, "role,fold\ntrain,0\n").unwrap();
    assert!(matches!(
        Manifest::load(&path).unwrap_err(),
        DataError::Malformed { line: 1, .. }
    ));
    fs::write(
        &path,
        format!(
            "{}\ntrain,,train,XR_HAND,x,1,1,0,a.png\n",
            mura_data::MANIFEST_HEADER.join(",")
        ),
    )
    .unwrap();
    let err = Manifest::load(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains(":2: patient \"x\" is not a number"),
        "{err}"
    );
    fs::write(
        &path,
        format!(
            "{}\ntrain,,train,XR_HAND,1,1,1,0,../a.png\n",
            mura_data::MANIFEST_HEADER.join(",")
        ),
    )
    .unwrap();
    assert!(matches!(
        Manifest::load(&path).unwrap_err(),
        DataError::EscapesRoot { line: 2, .. }
    ));
}

fn write_variants(dir: &Path) -> Vec<PathBuf> {
    let (w, h) = (5u32, 3u32);
    let gray = |x: u32, y: u32| (x * 40 + y * 10) as u8;
    let mut paths = Vec::new();
    let mut save = |name: &str, img: image::DynamicImage| {
        let p = dir.join(name);
        img.save(&p).unwrap();
        paths.push(p);
    };
    save(
        "l8.png",
        image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([gray(x, y)])
        })),
    );
    save(
        "l16.png",
        image::DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(w, h, |x, y| {
            image::Luma([u16::from(gray(x, y)) * 257])
        })),
    );
    save(
        "la8.png",
        image::DynamicImage::ImageLumaA8(image::ImageBuffer::from_fn(w, h, |x, y| {
            image::LumaA([gray(x, y), 255])
        })),
    );
    save(
        "rgb8.png",
        image::DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(w, h, |x, y| {
            let g = gray(x, y);
            image::Rgb([g, g, g])
        })),
    );
    save(
        "rgba8.png",
        image::DynamicImage::ImageRgba8(image::ImageBuffer::from_fn(w, h, |x, y| {
            let g = gray(x, y);
            image::Rgba([g, g, g, 255])
        })),
    );
    save(
        "rgb16.png",
        image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(w, h, |x, y| {
            let g = u16::from(gray(x, y)) * 257;
            image::Rgb([g, g, g])
        })),
    );
    paths
}

#[test]
fn every_colour_type_and_depth_decodes_to_the_same_gray() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_variants(dir.path());
    let reference = decode_file(&paths[0], ColorMode::Gray).unwrap();
    assert_eq!((reference.width, reference.height), (5, 3));
    for p in &paths {
        let g = decode_file(p, ColorMode::Gray).unwrap();
        assert_eq!(g.pixels, reference.pixels, "{}", p.display());
        let rgb = decode_file(p, ColorMode::Rgb).unwrap();
        assert_eq!(rgb.pixels.len(), 45);
        assert!(
            rgb.pixels
                .chunks(3)
                .zip(&reference.pixels)
                .all(|(c, &g)| c == [g, g, g])
        );
    }
    // JPEG: lossy, so within a few levels.
    let jpg = dir.path().join("l8.jpg");
    image::GrayImage::from_fn(16, 16, |x, _| image::Luma([(x * 8) as u8]))
        .save(&jpg)
        .unwrap();
    let g = decode_file(&jpg, ColorMode::Gray).unwrap();
    assert!(
        g.pixels
            .iter()
            .enumerate()
            .all(|(i, &v)| (i32::from(v) - (i as i32 % 16) * 8).abs() <= 6)
    );
}

#[test]
fn corrupt_file_is_an_error_naming_it_or_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = write_variants(dir.path());
    let bytes = fs::read(&paths[0]).unwrap();
    let truncated = dir.path().join("truncated.png");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.path().join("garbage.png");
    fs::write(&garbage, b"not an image at all").unwrap();
    paths.insert(2, truncated.clone());
    paths.push(garbage.clone());
    paths.push(dir.path().join("missing.png"));

    let loader = Loader::new(
        paths.clone(),
        LoaderConfig {
            shuffle: false,
            threads: 2,
            ..LoaderConfig::default()
        },
    )
    .unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        2,
        "stops at the first error"
    );
    let err = results.last().unwrap().as_ref().unwrap_err();
    assert!(
        matches!(err, DataError::Decode { path, .. } if *path == truncated),
        "{err:?}"
    );
    assert!(err.to_string().contains("truncated.png"));

    let loader = Loader::new(
        paths,
        LoaderConfig {
            shuffle: false,
            skip_unreadable: true,
            ..LoaderConfig::default()
        },
    )
    .unwrap();
    let mut epoch = loader.epoch(0);
    let ok: Vec<usize> = epoch.by_ref().map(|s| s.unwrap().index).collect();
    assert_eq!(ok, vec![0, 1, 3, 4, 5, 6]);
    assert_eq!(epoch.skipped().len(), 3);
    assert!(
        epoch
            .skipped()
            .iter()
            .any(|e| e.to_string().contains("missing.png"))
    );
}

#[test]
fn loader_order_depends_on_seed_and_epoch_not_threads() {
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        &SynthConfig {
            studies: 12,
            seed: 2,
            max_side: 24,
            ..SynthConfig::default()
        },
    )
    .unwrap();
    let d = index(dir.path(), &IndexOptions::default()).unwrap().dataset;
    let files: Vec<PathBuf> = d.images().iter().map(|r| r.file(d.base())).collect();
    let run = |threads: usize, prefetch: usize, epoch: u64| -> Vec<(usize, Vec<u8>)> {
        let cfg = LoaderConfig {
            threads,
            prefetch,
            seed: 11,
            ..LoaderConfig::default()
        };
        Loader::new(files.clone(), cfg)
            .unwrap()
            .epoch(epoch)
            .map(|s| {
                let s = s.unwrap();
                (s.index, s.value.pixels)
            })
            .collect()
    };
    let one = run(1, 1, 0);
    assert_eq!(one.len(), files.len());
    assert_eq!(run(3, 2, 0), one);
    assert_eq!(run(2, 16, 0), one);
    let next_epoch = run(2, 4, 1);
    assert_ne!(
        next_epoch.iter().map(|s| s.0).collect::<Vec<_>>(),
        one.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    let mut a: Vec<usize> = one.iter().map(|s| s.0).collect();
    a.sort();
    assert_eq!(
        a,
        (0..files.len()).collect::<Vec<_>>(),
        "every file once per epoch"
    );
    // Dropping an epoch half-way stops its workers cleanly.
    let loader = Loader::new(files, LoaderConfig::default()).unwrap();
    let mut e = loader.epoch(0);
    assert!(e.next().is_some());
    drop(e);
    assert!(
        Loader::new(
            vec![],
            LoaderConfig {
                threads: 0,
                ..LoaderConfig::default()
            }
        )
        .is_err()
    );
}

#[test]
fn synthetic_tree_is_deterministic_and_well_formed() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let config = SynthConfig {
        studies: 60,
        seed: 5,
        max_side: 64,
        odd_format_fraction: 0.1,
        ..SynthConfig::default()
    };
    let summary = generate(a.path(), &config).unwrap();
    generate(b.path(), &config).unwrap();
    let indexed = index(
        a.path(),
        &IndexOptions {
            strict: true,
            check_files: true,
        },
    )
    .unwrap();
    let d = &indexed.dataset;
    assert_eq!(d.len(), summary.images);
    assert_eq!(d.studies().len(), 60);
    assert!(summary.rgb_images > 0 && summary.sixteen_bit_images > 0);
    for r in d.images() {
        let bytes_a = fs::read(r.file(a.path())).unwrap();
        assert_eq!(bytes_a, fs::read(r.file(b.path())).unwrap(), "{}", r.path);
        let img = decode_file(&r.file(a.path()), ColorMode::Gray).unwrap();
        assert_eq!(img.width.max(img.height), 64);
        assert!(img.width.min(img.height) >= 35);
    }
    for s in d.studies() {
        assert!((1..=4).contains(&s.images.len()));
    }
    // Refuses to overwrite.
    assert!(matches!(
        generate(a.path(), &config),
        Err(DataError::InvalidConfig { .. })
    ));
    let other = tempfile::tempdir().unwrap();
    generate(other.path(), &SynthConfig { seed: 6, ..config }).unwrap();
    let first = &d.images()[0].path;
    assert!(fs::read(other.path().join(first)).ok() != fs::read(a.path().join(first)).ok());
}

#[test]
fn walking_reports_unknown_folders_and_layout_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    for name in [
        "train_image_paths.csv",
        "train_labeled_studies.csv",
        "valid_image_paths.csv",
        "valid_labeled_studies.csv",
    ] {
        fs::remove_file(csv_path(&root, name)).unwrap();
    }
    fs::create_dir_all(root.join("MURA-v1.1/train/XR_KNEE/patient00009/study1_negative")).unwrap();
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::BadLayout { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("unknown body part folder \"XR_KNEE\""),
        "{err}"
    );
    fs::remove_dir_all(root.join("MURA-v1.1/train/XR_KNEE")).unwrap();
    fs::create_dir_all(root.join("MURA-v1.1/train/XR_HAND/patient00002/study3_maybe")).unwrap();
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("study3_maybe")
            && err.to_string().contains("neither positive nor negative"),
        "{err}"
    );
    fs::remove_dir_all(root.join("MURA-v1.1/train/XR_HAND/patient00002/study3_maybe")).unwrap();
    // A stray file beside the images is skipped and counted, not fatal.
    fs::write(
        root.join("MURA-v1.1/train/XR_HAND/patient00002/study1_negative/notes.txt"),
        "x",
    )
    .unwrap();
    let walked = index(&root, &IndexOptions::default()).unwrap();
    assert_eq!(walked.dataset.len(), 6);
    assert_eq!(walked.skip_counts(), vec![(SkipReason::Unexpected, 1)]);
}

/// CRC-32 (IEEE), for hand-made PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

#[test]
fn decompression_bomb_header_is_refused_before_allocating() {
    for side in [20_000u32, 100_000] {
        bomb(side);
    }
}

/// A 100-byte PNG whose header claims `side`×`side` pixels.
fn bomb(side: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit gray
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    fs::write(&path, &png).unwrap();
    let err = decode_file(&path, ColorMode::Gray).unwrap_err();
    assert!(
        matches!(&err, DataError::Decode { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains("bomb.png"), "{err}");
}
