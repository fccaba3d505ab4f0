//! The official counts, patient-grouped stratified splits and k-fold, manifests.

use super::*;

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
