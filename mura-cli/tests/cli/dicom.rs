//! DICOM on the command line: `predict` and `explain` read DICOM files and folders (MONOCHROME1
//! and MONOCHROME2 of one picture score the same as its PNG), group studies by StudyInstanceUID,
//! keep patient identifiers out of every output unless asked, and refuse broken files in one
//! line.

use mura_data::dicom::{WriteSpec, write};

use super::*;

/// The first synthetic image, and its pixels written as DICOM files in `folder`: MONOCHROME2
/// and MONOCHROME1 (inverted) of study 1.2.1 with a patient's identifiers, and one of study
/// 1.2.2. The window (centre 128, width 256) is the identity on 8-bit values.
fn exports(root: &Path, folder: &Path) -> PathBuf {
    let png = first_png(root).unwrap();
    let img = image::open(&png).unwrap().into_luma8();
    let (w, h) = (img.width() as u16, img.height() as u16);
    let pixels = img.into_raw();
    fs::create_dir_all(folder).unwrap();
    let spec = |pixels: Vec<u8>, uid: &str| WriteSpec {
        window: Some((128.0, 256.0)),
        patient_name: Some("DOE^JANE".into()),
        patient_id: Some("PID-4711".into()),
        study_date: Some("20240131".into()),
        ..WriteSpec::gray8(w, h, pixels, uid)
    };
    write(&folder.join("a-m2.dcm"), &spec(pixels.clone(), "1.2.1")).unwrap();
    let inverted = pixels.iter().map(|v| 255 - v).collect();
    let m1 = WriteSpec {
        monochrome1: true,
        ..spec(inverted, "1.2.1")
    };
    write(&folder.join("b-m1"), &m1).unwrap();
    write(&folder.join("c.dcm"), &spec(pixels, "1.2.2")).unwrap();
    png
}

fn first_png(dir: &Path) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir).ok()?.map(|e| e.unwrap().path()).collect();
    entries.sort();
    entries.into_iter().find_map(|p| match p.is_dir() {
        true => first_png(&p),
        false => (p.extension()? == "png").then_some(p),
    })
}

fn json(args: &[&str]) -> serde_json::Value {
    let o = mura(args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[test]
fn predict_and_explain_read_dicom_as_their_png_and_keep_identifiers_out() {
    let dir = tempfile::tempdir().unwrap();
    let (root, run) = tiny_run(dir.path());
    let folder = dir.path().join("export");
    let png = exports(&root, &folder);
    let r = run.to_str().unwrap();
    let (m2, m1) = (folder.join("a-m2.dcm"), folder.join("b-m1"));
    let v = json(&[
        "predict",
        r,
        png.to_str().unwrap(),
        m2.to_str().unwrap(),
        m1.to_str().unwrap(),
        "--json",
    ]);
    let p: Vec<f64> = (0..3)
        .map(|i| v[i]["probability"].as_f64().unwrap())
        .collect();
    assert_eq!(p[0], p[1], "MONOCHROME2 as its PNG");
    assert_eq!(p[1], p[2], "MONOCHROME1 as MONOCHROME2");

    // The folder: two studies by StudyInstanceUID, no identifiers anywhere.
    let o = mura(&["predict", r, folder.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.matches("(study: mean of").count(), 2, "{out}");
    let v = json(&["predict", r, folder.to_str().unwrap(), "--json"]);
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["images"].as_array().unwrap().len(), 2);
    for text in [out, v.to_string(), stderr(&o)] {
        for secret in ["DOE", "PID-4711", "20240131", "1.2.1", "1.2.2"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
    let o = mura(&["predict", r, folder.to_str().unwrap(), "--show-identifiers"]);
    let out = stdout(&o);
    assert!(
        out.contains("[study 1.2.1]") && out.contains("[study 1.2.2]"),
        "{out}"
    );
    assert!(out.contains("patient DOE^JANE (ID PID-4711), study date 20240131"));
    // One frame of a file: FILE#N.
    let frame = format!("{}#1", m1.display());
    let v = json(&["predict", r, &frame, "--json"]);
    assert_eq!(v[0]["probability"].as_f64().unwrap(), p[2]);
    fails_with(
        &["predict", r, &format!("{}#2", m1.display())],
        "has 1 frame(s), no frame 2",
    );

    let cams = dir.path().join("cams");
    let o = mura(&[
        "explain",
        r,
        m1.to_str().unwrap(),
        "--out",
        cams.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(cams.join("b-m1.gradcam.png").is_file());
    assert!(!stdout(&o).contains("DOE"));
}

#[test]
fn broken_dicom_inputs_and_bad_voi_values_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (root, run) = tiny_run(dir.path());
    let folder = dir.path().join("export");
    exports(&root, &folder);
    let r = run.to_str().unwrap();
    let good = folder.join("c.dcm");
    let bytes = fs::read(&good).unwrap();
    let cut = dir.path().join("cut.dcm");
    fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    fails_with(&["predict", r, cut.to_str().unwrap()], "cut.dcm");
    let o = mura(&["predict", r, good.to_str().unwrap(), "--voi", "40"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--voi"), "{}", stderr(&o));
    // A window given on the command line changes what the model sees.
    let a = json(&["predict", r, good.to_str().unwrap(), "--json"]);
    let b = json(&[
        "predict",
        r,
        good.to_str().unwrap(),
        "--voi",
        "30,20",
        "--json",
    ]);
    assert_ne!(a[0]["probability"], b[0]["probability"]);
}
