//! Writing a monochrome radiograph as a DICOM file (explicit VR little endian, uncompressed):
//! for test data and for exporting a synthetic MURA in the form a PACS gives it.

use std::path::Path;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR, dicom_value};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::Lut;
use crate::DataError;

/// Stored pixel values of every frame, one after another, rows top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    U8(Vec<u8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
}

/// What [`write`] writes.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteSpec {
    pub width: u16,
    pub height: u16,
    pub frames: u32,
    pub pixels: Pixels,
    /// `MONOCHROME2` (0 is black) or `MONOCHROME1` (0 is white).
    pub monochrome1: bool,
    /// Rescale slope and intercept.
    pub rescale: Option<(f64, f64)>,
    /// Window centre and width.
    pub window: Option<(f64, f64)>,
    pub voi_lut: Option<Lut>,
    pub study_uid: String,
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub study_date: Option<String>,
    pub body_part: Option<String>,
}

impl WriteSpec {
    /// One 8-bit MONOCHROME2 frame of `pixels` (`width` × `height`) in study `study_uid`.
    pub fn gray8(width: u16, height: u16, pixels: Vec<u8>, study_uid: &str) -> Self {
        WriteSpec {
            width,
            height,
            frames: 1,
            pixels: Pixels::U8(pixels),
            monochrome1: false,
            rescale: None,
            window: None,
            voi_lut: None,
            study_uid: study_uid.into(),
            patient_name: None,
            patient_id: None,
            study_date: None,
            body_part: None,
        }
    }
}

fn text(tag: dicom_core::Tag, vr: VR, s: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(s))
}

fn us(tag: dicom_core::Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

fn ds(v: f64) -> String {
    format!("{v}")
}

/// Writes `spec` to `path` as a Digital X-Ray image (for presentation).
pub fn write(path: &Path, spec: &WriteSpec) -> Result<(), DataError> {
    let n = usize::from(spec.width) * usize::from(spec.height) * spec.frames as usize;
    let (bits, signed, len, pixel_data) = match &spec.pixels {
        Pixels::U8(v) => (8, 0, v.len(), PrimitiveValue::from(v.clone())),
        Pixels::U16(v) => (
            16,
            0,
            v.len(),
            PrimitiveValue::U16(v.iter().copied().collect()),
        ),
        Pixels::I16(v) => (
            16,
            1,
            v.len(),
            PrimitiveValue::I16(v.iter().copied().collect()),
        ),
    };
    let bad = |reason: String| DataError::Dicom {
        path: path.to_path_buf(),
        reason,
    };
    if len != n {
        return Err(bad(format!("{len} pixel values for {n}")));
    }
    let sop_instance = format!("{}.{}", spec.study_uid, 1);
    let mut obj = InMemDicomObject::new_empty();
    let class = uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION;
    obj.put(text(tags::SOP_CLASS_UID, VR::UI, class));
    obj.put(text(tags::SOP_INSTANCE_UID, VR::UI, &sop_instance));
    obj.put(text(tags::MODALITY, VR::CS, "DX"));
    obj.put(text(tags::STUDY_INSTANCE_UID, VR::UI, &spec.study_uid));
    obj.put(text(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &format!("{}.0", spec.study_uid),
    ));
    for (tag, vr, value) in [
        (tags::PATIENT_NAME, VR::PN, &spec.patient_name),
        (tags::PATIENT_ID, VR::LO, &spec.patient_id),
        (tags::STUDY_DATE, VR::DA, &spec.study_date),
        (tags::BODY_PART_EXAMINED, VR::CS, &spec.body_part),
    ] {
        if let Some(v) = value {
            obj.put(text(tag, vr, v));
        }
    }
    obj.put(us(tags::SAMPLES_PER_PIXEL, 1));
    let photometric = if spec.monochrome1 {
        "MONOCHROME1"
    } else {
        "MONOCHROME2"
    };
    obj.put(text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric));
    obj.put(us(tags::ROWS, spec.height));
    obj.put(us(tags::COLUMNS, spec.width));
    obj.put(us(tags::BITS_ALLOCATED, bits));
    obj.put(us(tags::BITS_STORED, bits));
    obj.put(us(tags::HIGH_BIT, bits - 1));
    obj.put(us(tags::PIXEL_REPRESENTATION, signed));
    if spec.frames > 1 {
        obj.put(text(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            &spec.frames.to_string(),
        ));
    }
    if let Some((slope, intercept)) = spec.rescale {
        obj.put(text(tags::RESCALE_SLOPE, VR::DS, &ds(slope)));
        obj.put(text(tags::RESCALE_INTERCEPT, VR::DS, &ds(intercept)));
    }
    if let Some((center, width)) = spec.window {
        obj.put(text(tags::WINDOW_CENTER, VR::DS, &ds(center)));
        obj.put(text(tags::WINDOW_WIDTH, VR::DS, &ds(width)));
    }
    if let Some(l) = &spec.voi_lut {
        let entries = l.table.len() as u16;
        let first = l.first as u16;
        let mut item = InMemDicomObject::new_empty();
        item.put(DataElement::new(
            tags::LUT_DESCRIPTOR,
            VR::US,
            dicom_value!(U16, [entries, first, u16::from(l.bits)]),
        ));
        item.put(DataElement::new(
            tags::LUT_DATA,
            VR::OW,
            PrimitiveValue::U16(l.table.iter().copied().collect()),
        ));
        obj.put(DataElement::new(
            tags::VOILUT_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![item]),
        ));
    }
    let vr = if bits == 8 { VR::OB } else { VR::OW };
    obj.put(DataElement::new(tags::PIXEL_DATA, vr, pixel_data));
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(&sop_instance);
    let file = obj
        .with_meta(meta)
        .map_err(|e| bad(format!("cannot make a DICOM file: {e}")))?;
    file.write_to_file(path)
        .map_err(|e| bad(format!("cannot write: {e}")))
}
