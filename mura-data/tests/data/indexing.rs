//! Indexing: from the CSVs and by walking, skips counted or refused, every bad line named.

use super::*;

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

/// A split whose image list is empty while its labelled-studies list is not is an error naming
/// both files, not a split that silently vanishes.
#[test]
fn an_emptied_image_list_is_an_error_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    fs::write(csv_path(&root, "valid_image_paths.csv"), "").unwrap();
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(
        matches!(err, DataError::EmptyImageList { studies: 1, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("valid_image_paths.csv") && text.contains("valid_labeled_studies.csv"),
        "{text}"
    );
}

/// A labelled study none of whose images is listed is counted among the skips, with its file
/// and line, and refused under `--strict`; the other studies are all indexed.
#[test]
fn a_labelled_study_without_images_is_counted_or_refused_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let images = csv_path(&root, "train_image_paths.csv");
    let kept: String = fs::read_to_string(&images)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("study2_negative"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&images, kept).unwrap();
    let indexed = index(&root, &IndexOptions::default()).unwrap();
    assert_eq!(indexed.dataset.len(), 5, "the other studies' images");
    assert_eq!(
        indexed.skip_counts(),
        vec![(SkipReason::StudyWithoutImages, 1)]
    );
    let skipped = &indexed.skipped[0];
    assert!(
        skipped
            .path
            .to_string_lossy()
            .ends_with("train_labeled_studies.csv:2"),
        "{skipped:?}"
    );
    let strict = IndexOptions {
        strict: true,
        ..IndexOptions::default()
    };
    let err = index(&root, &strict).unwrap_err().to_string();
    assert!(
        err.contains("train_labeled_studies.csv:2") && err.contains("no image"),
        "{err}"
    );
}

/// A study listed twice with the same label is counted like the other skips and indexed once;
/// listed again with the other label, it is an error naming both lines.
#[test]
fn a_duplicated_labelled_study_is_counted_and_a_conflicting_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let labels = csv_path(&root, "train_labeled_studies.csv");
    let first = fs::read_to_string(&labels)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    append_line(&labels, &first);
    let indexed = index(&root, &IndexOptions::default()).unwrap();
    assert_eq!(indexed.dataset.len(), 6, "every image once");
    assert_eq!(indexed.skip_counts(), vec![(SkipReason::DuplicateStudy, 1)]);
    let strict = IndexOptions {
        strict: true,
        ..IndexOptions::default()
    };
    assert!(
        index(&root, &strict)
            .unwrap_err()
            .to_string()
            .contains("listed twice")
    );

    let (study, label) = first.rsplit_once(',').unwrap();
    let other = if label == "1" { "0" } else { "1" };
    set_line(&labels, 4, &format!("{study},{other}"));
    let err = index(&root, &IndexOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::ConflictingLabels {
                line: 4,
                first_line: 1,
                ..
            }
        ),
        "{err:?}"
    );
}
