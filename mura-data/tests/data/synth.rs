//! The synthetic generator: deterministic and well-formed.

use super::*;

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
