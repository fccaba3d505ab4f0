//! DICOM input: files the tests write themselves (dicom-object), read back through the viewer's
//! pipeline and checked against hand-computed pixels (exact: 8-bit values after rounding).

use mura_data::Voi;
use mura_data::dicom::{self, Lut, Pixels, WriteSpec};

use super::*;

fn gray(path: &Path, voi: Voi) -> Vec<u8> {
    mura_data::decode_file_with(path, ColorMode::Gray, voi)
        .unwrap()
        .pixels
}

fn err(path: &Path) -> String {
    decode_file(path, ColorMode::Gray).unwrap_err().to_string()
}

#[test]
fn monochrome1_and_monochrome2_of_one_picture_give_the_same_image() {
    let dir = tempfile::tempdir().unwrap();
    let picture: Vec<u8> = (0..48u32).map(|i| (i * 37 % 200 + 20) as u8).collect();
    let m2 = dir.path().join("m2.dcm");
    dicom::write(&m2, &WriteSpec::gray8(8, 6, picture.clone(), "1.2.3")).unwrap();
    let m1 = dir.path().join("m1.dcm");
    let inverted = picture.iter().map(|v| 255 - v).collect();
    let spec = WriteSpec {
        monochrome1: true,
        ..WriteSpec::gray8(8, 6, inverted, "1.2.3")
    };
    dicom::write(&m1, &spec).unwrap();
    for voi in [Voi::Auto, Voi::None] {
        let (a, b) = (gray(&m2, voi), gray(&m1, voi));
        assert_eq!(a, b, "{voi}");
        // min–max: the darkest pixel black, the brightest white.
        assert_eq!((a.iter().min(), a.iter().max()), (Some(&0), Some(&255)));
    }
    let rgb = decode_file(&m2, ColorMode::Rgb).unwrap();
    assert_eq!(rgb.pixels.len(), 48 * 3);
    assert_eq!(&rgb.pixels[..3], &[gray(&m2, Voi::Auto)[0]; 3]);
}

/// Four signed stored values, slope 2, intercept -1024: modality values -1024, 0, 40, 376.
fn ct_like(dir: &Path, window: Option<(f64, f64)>) -> PathBuf {
    let path = dir.join("ct.dcm");
    let spec = WriteSpec {
        width: 2,
        height: 2,
        frames: 1,
        pixels: Pixels::I16(vec![0, 512, 532, 700]),
        rescale: Some((2.0, -1024.0)),
        window,
        ..WriteSpec::gray8(1, 1, vec![0], "1.2.4")
    };
    dicom::write(&path, &spec).unwrap();
    path
}

#[test]
fn rescale_and_windowing_match_hand_computed_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let path = ct_like(dir.path(), Some((40.0, 400.0)));
    // The file's window (c 40, w 400), DICOM's linear function: y = (x - 39.5) / 399 + 0.5.
    // 0 → 0.40100 → 102; 40 → 0.50125 → 128; -1024 → 0; 376 → 1.
    assert_eq!(gray(&path, Voi::Auto), vec![0, 102, 128, 255]);
    // min–max of the modality values: (x + 1024) / 1400.
    assert_eq!(gray(&path, Voi::None), vec![0, 187, 194, 255]);
    // A window given on the command line: (x + 0.5) / 99 + 0.5.
    let narrow = "0,100".parse().unwrap();
    assert_eq!(gray(&path, narrow), vec![0, 129, 232, 255]);
    // Without a window in the file, auto falls back to min–max.
    let bare = ct_like(&dir.path().join(""), None);
    assert_eq!(gray(&bare, Voi::Auto), vec![0, 187, 194, 255]);
}

#[test]
fn a_voi_lut_comes_before_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lut.dcm");
    let spec = WriteSpec {
        width: 4,
        height: 1,
        frames: 1,
        pixels: Pixels::U16(vec![0, 101, 102, 900]),
        window: Some((10.0, 20.0)),
        voi_lut: Some(Lut {
            first: 100,
            bits: 8,
            table: vec![10, 60, 250],
        }),
        ..WriteSpec::gray8(1, 1, vec![0], "1.2.5")
    };
    dicom::write(&path, &spec).unwrap();
    // Below the table: its first entry; then 60 and 250 of 255; past it: the last.
    assert_eq!(gray(&path, Voi::Auto), vec![10, 60, 250, 250]);
}

#[test]
fn each_frame_of_a_multi_frame_file_is_a_view() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("multi.dcm");
    let mut pixels = vec![10u8, 20, 30, 40];
    pixels.extend([200u8, 100, 50, 0]);
    let spec = WriteSpec {
        frames: 2,
        pixels: Pixels::U8(pixels),
        ..WriteSpec::gray8(2, 2, vec![], "1.2.6")
    };
    dicom::write(&path, &spec).unwrap();
    let info = dicom::info(&path).unwrap();
    assert_eq!((info.frames, info.columns, info.rows), (2, 2, 2));
    assert_eq!(info.study_uid.as_deref(), Some("1.2.6"));
    let second = dicom::frame_path(&path, 1);
    assert_eq!(second.file_name().unwrap(), "multi.dcm#2");
    assert_eq!(dicom::split_frame(&second), (path.clone(), Some(1)));
    assert_eq!(gray(&second, Voi::Auto), vec![255, 128, 64, 0]);
    assert_eq!(
        gray(&path, Voi::Auto),
        vec![0, 85, 170, 255],
        "the plain path is frame 1"
    );
    let e = err(&dicom::frame_path(&path, 2));
    assert!(e.contains("multi.dcm: has 2 frame(s), no frame 3"), "{e}");
    // From memory (an upload): every frame, the same pixels.
    let bytes = fs::read(&path).unwrap();
    assert!(dicom::is_dicom_bytes(&bytes));
    let frames = dicom::decode_bytes(&bytes, Path::new("upload"), Voi::Auto, ColorMode::Gray);
    let frames: Vec<Vec<u8>> = frames.unwrap().into_iter().map(|f| f.pixels).collect();
    assert_eq!(frames, [vec![0, 85, 170, 255], vec![255, 128, 64, 0]]);
    let e = dicom::decode_bytes(
        &bytes[..200],
        Path::new("upload"),
        Voi::Auto,
        ColorMode::Gray,
    );
    assert!(e.unwrap_err().to_string().starts_with("upload: "));
}

#[test]
fn dicom_files_are_found_by_extension_or_by_their_magic() {
    let dir = tempfile::tempdir().unwrap();
    let named = dir.path().join("a.DCM");
    dicom::write(&named, &WriteSpec::gray8(2, 1, vec![0, 255], "1.2.7")).unwrap();
    let bare = dir.path().join("IM0001");
    fs::copy(&named, &bare).unwrap();
    assert!(dicom::is_dicom(&named) && dicom::is_dicom(&bare));
    assert_eq!(gray(&bare, Voi::Auto), vec![0, 255]);
    let png = dir.path().join("picture");
    image::GrayImage::from_raw(2, 1, vec![0, 255])
        .unwrap()
        .save_with_format(&png, image::ImageFormat::Png)
        .unwrap();
    assert!(!dicom::is_dicom(&png));
    assert_eq!(gray(&png, Voi::Auto), vec![0, 255]);
}

#[test]
fn identifiers_are_read_apart_and_never_debug_printed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id.dcm");
    let spec = WriteSpec {
        patient_name: Some("DOE^JANE".into()),
        patient_id: Some("PID-4711".into()),
        study_date: Some("20240131".into()),
        body_part: Some("WRIST".into()),
        ..WriteSpec::gray8(1, 1, vec![7], "1.2.8")
    };
    dicom::write(&path, &spec).unwrap();
    let info = dicom::info(&path).unwrap();
    assert_eq!(info.identifiers.patient_id.as_deref(), Some("PID-4711"));
    assert_eq!(info.body_part.as_deref(), Some("WRIST"));
    let printed = format!("{info:?}");
    for secret in ["DOE", "PID-4711", "20240131"] {
        assert!(!printed.contains(secret), "{printed}");
    }
}

#[test]
fn broken_and_non_image_files_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.dcm");
    let picture: Vec<u8> = (0..64 * 64).map(|i| (i % 251) as u8).collect();
    dicom::write(&good, &WriteSpec::gray8(64, 64, picture, "1.2.9")).unwrap();
    let bytes = fs::read(&good).unwrap();
    let cut = dir.path().join("cut.dcm");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&cut);
    assert!(e.starts_with(&format!("{}: ", cut.display())), "{e}");

    // A structured report: a DICOM file with no pixel data.
    let sr = dir.path().join("report.dcm");
    let mut obj = dicom_object::InMemDicomObject::new_empty();
    let class = "1.2.840.10008.5.1.4.1.1.88.11";
    let put = |o: &mut dicom_object::InMemDicomObject, tag, vr, v: &str| {
        o.put(dicom_core::DataElement::new(
            tag,
            vr,
            dicom_core::value::PrimitiveValue::from(v),
        ));
    };
    put(
        &mut obj,
        dicom_dictionary_std::tags::SOP_CLASS_UID,
        dicom_core::VR::UI,
        class,
    );
    put(
        &mut obj,
        dicom_dictionary_std::tags::SOP_INSTANCE_UID,
        dicom_core::VR::UI,
        "1.2.10",
    );
    let meta = dicom_object::FileMetaTableBuilder::new()
        .transfer_syntax("1.2.840.10008.1.2.1")
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid("1.2.10");
    obj.with_meta(meta).unwrap().write_to_file(&sr).unwrap();
    let e = err(&sr);
    assert!(e.contains("report.dcm: not an image"), "{e}");
    assert!(e.contains(class), "{e}");

    let missing = dir.path().join("absent.dcm");
    assert!(err(&missing).contains("absent.dcm"));
}

#[cfg(not(feature = "jpeg-ls"))]
#[test]
fn a_compressed_syntax_without_its_feature_names_the_syntax_and_the_feature() {
    use dicom_core::value::{PixelFragmentSequence, Value};
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.dcm");
    dicom::write(&plain, &WriteSpec::gray8(2, 2, vec![1, 2, 3, 4], "1.2.11")).unwrap();
    let mut obj = dicom_object::open_file(&plain).unwrap().into_inner();
    let jpeg_ls = "1.2.840.10008.1.2.4.80";
    let fragments = PixelFragmentSequence::new(vec![], vec![vec![0xFF, 0xD8, 0xFF, 0xF7]]);
    obj.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::PIXEL_DATA,
        dicom_core::VR::OB,
        Value::PixelSequence(fragments),
    ));
    let meta = dicom_object::FileMetaTableBuilder::new()
        .transfer_syntax(jpeg_ls)
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.1.1")
        .media_storage_sop_instance_uid("1.2.11.1");
    let path = dir.path().join("jpegls.dcm");
    obj.with_meta(meta).unwrap().write_to_file(&path).unwrap();
    let e = err(&path);
    assert!(e.contains("JPEG-LS"), "{e}");
    assert!(e.contains(jpeg_ls), "{e}");
    assert!(e.contains("--features jpeg-ls"), "{e}");
}

#[test]
fn a_mura_tree_with_dicom_images_indexes_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let root = tree(dir.path());
    let study = "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive";
    let png = root.join(study).join("image2.png");
    let original = decode_file(&png, ColorMode::Gray).unwrap();
    // The identity window of 8-bit values under DICOM's linear function: centre 128, width 256.
    let spec = WriteSpec {
        window: Some((128.0, 256.0)),
        ..WriteSpec::gray8(12, 9, original.pixels.clone(), "1.2.12")
    };
    dicom::write(&root.join(study).join("image2.dcm"), &spec).unwrap();
    fs::remove_file(&png).unwrap();
    let csv = csv_path(&root, "train_image_paths.csv");
    set_line(&csv, 2, &format!("{study}/image2.dcm"));
    let indexed = index(&root, &IndexOptions::default()).unwrap();
    let files: Vec<PathBuf> = indexed
        .dataset
        .images()
        .iter()
        .map(|r| r.file(indexed.dataset.base()))
        .collect();
    let dcm = files
        .iter()
        .position(|f| f.extension().is_some_and(|e| e == "dcm"))
        .unwrap();
    let loader = Loader::new(files, LoaderConfig::default()).unwrap();
    let loaded = loader
        .epoch_with(0, |_, image| Ok(image))
        .map(Result::unwrap)
        .find(|s| s.index == dcm)
        .unwrap();
    assert_eq!(loaded.value, original);
    // `mura check`: every image decodes; a broken DICOM file is named, not fatal.
    let c = mura_data::check_images(&indexed.dataset, 2).unwrap();
    assert_eq!((c.decoded, c.total), (6, 6));
    fs::write(root.join(study).join("image2.dcm"), [0u8; 40]).unwrap();
    let c = mura_data::check_images(&indexed.dataset, 2).unwrap();
    assert_eq!(c.decoded, 5);
    assert!(c.unreadable[0].to_string().contains("image2.dcm: "));
}
