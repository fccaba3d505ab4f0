//! DICOM input: radiographs as a PACS exports them. A file is recognised by its `.dcm` /
//! `.dicom` extension or, without one, by the `DICM` magic after its 128-byte preamble. Its pixel
//! data is decoded with pure-Rust codecs (uncompressed, RLE, JPEG baseline/extended/lossless,
//! deflate; JPEG-LS and JPEG 2000 with the `jpeg-ls` and `jpeg2000` features), and monochrome
//! frames go through the viewer's pipeline ([`voi`]) to 8-bit gray. Each frame of a multi-frame
//! file is a view, addressed as `FILE#N` (N from 1).
//!
//! Patient identifiers are read apart ([`Identifiers`]) and never printed by `Debug`.

mod voi;
mod write;

use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder, VoiLutFunction};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

pub use voi::{Lut, Voi, WindowFunction};
pub use write::{Pixels, WriteSpec, write};

use crate::DataError;
use crate::loader::{ColorMode, DecodedImage, MAX_IMAGE_SIDE};
use voi::Transform;

/// Most frames a file may hold.
pub const MAX_FRAMES: u32 = 4096;

/// Patient identifiers of a file; shown only when a user asks (`--show-identifiers`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Identifiers {
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub study_date: Option<String>,
}

impl std::fmt::Debug for Identifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identifiers { .. }")
    }
}

/// What a DICOM file's header says (its pixel data unread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomInfo {
    pub rows: u32,
    pub columns: u32,
    pub frames: u32,
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    pub body_part: Option<String>,
    pub modality: Option<String>,
    /// The transfer syntax's name (its UID when unknown).
    pub transfer_syntax: String,
    pub identifiers: Identifiers,
}

/// Whether `path` is a DICOM file: by extension (`.dcm`, `.dicom`), else, for a file that is not
/// named as a PNG or JPEG, by the `DICM` magic at byte 128.
pub fn is_dicom(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("dcm" | "dicom") => true,
        Some("png" | "jpg" | "jpeg") => false,
        _ => has_magic(path),
    }
}

fn has_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head[128..] == b"DICM")
}

/// The view of frame `frame` (from 0) of the DICOM file `path`: `path#frame+1`.
pub fn frame_path(path: &Path, frame: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!("#{}", frame + 1));
    PathBuf::from(s)
}

/// The file and frame (from 0) a view names: `FILE#N` when FILE exists and `FILE#N` does not;
/// the path itself otherwise.
pub fn split_frame(path: &Path) -> (PathBuf, Option<u32>) {
    let text = path.to_string_lossy();
    if let Some((file, n)) = text.rsplit_once('#')
        && let Ok(n) = n.parse::<u32>()
        && n >= 1
        && !path.exists()
        && Path::new(file).is_file()
    {
        return (PathBuf::from(file), Some(n - 1));
    }
    (path.to_path_buf(), None)
}

fn bad(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Dicom {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn open(path: &Path, header_only: bool) -> Result<DefaultDicomObject, DataError> {
    let mut options = OpenFileOptions::new();
    if header_only {
        options = options.read_until(tags::PIXEL_DATA);
    }
    if !path.is_file() {
        return Err(DataError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    options
        .open_file(path)
        .map_err(|e| bad(path, format!("not a readable DICOM file: {e}")))
}

fn text(obj: &DefaultDicomObject, tag: Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok()??;
    let s = e.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!s.is_empty()).then(|| s.to_string())
}

fn number(obj: &DefaultDicomObject, tag: Tag) -> Option<u32> {
    text(obj, tag).and_then(|s| s.parse().ok())
}

/// The name of a transfer syntax UID (the UID when unknown).
fn syntax_name(uid: &str) -> String {
    let uid = uid.trim_end_matches('\0');
    TransferSyntaxRegistry
        .get(uid)
        .map_or_else(|| uid.to_string(), |ts| format!("{} ({uid})", ts.name()))
}

/// The header of the DICOM file `path`; a file without pixel data (a structured report, a
/// presentation state) or with an image larger than [`MAX_IMAGE_SIDE`] is refused.
pub fn info(path: &Path) -> Result<DicomInfo, DataError> {
    let obj = open(path, true)?;
    info_of(path, &obj)
}

fn info_of(path: &Path, obj: &DefaultDicomObject) -> Result<DicomInfo, DataError> {
    let (rows, columns) = (number(obj, tags::ROWS), number(obj, tags::COLUMNS));
    let (Some(rows), Some(columns)) = (rows, columns) else {
        let class = text(obj, tags::SOP_CLASS_UID)
            .unwrap_or_else(|| obj.meta().media_storage_sop_class_uid().to_string());
        return Err(bad(
            path,
            format!("not an image: the file has no pixel data (SOP class {class})"),
        ));
    };
    if rows == 0 || columns == 0 || rows > MAX_IMAGE_SIDE || columns > MAX_IMAGE_SIDE {
        return Err(bad(
            path,
            format!("{columns}×{rows} pixels: each side must be 1 to {MAX_IMAGE_SIDE}"),
        ));
    }
    let frames = number(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    if frames > MAX_FRAMES {
        return Err(bad(path, format!("{frames} frames: at most {MAX_FRAMES}")));
    }
    Ok(DicomInfo {
        rows,
        columns,
        frames,
        study_uid: text(obj, tags::STUDY_INSTANCE_UID),
        series_uid: text(obj, tags::SERIES_INSTANCE_UID),
        body_part: text(obj, tags::BODY_PART_EXAMINED),
        modality: text(obj, tags::MODALITY),
        transfer_syntax: syntax_name(obj.meta().transfer_syntax()),
        identifiers: Identifiers {
            patient_name: text(obj, tags::PATIENT_NAME),
            patient_id: text(obj, tags::PATIENT_ID),
            study_date: text(obj, tags::STUDY_DATE),
        },
    })
}

/// The cargo feature that decodes a transfer syntax this build cannot, if one does.
fn feature_for(uid: &str) -> Option<&'static str> {
    match uid.trim_end_matches('\0') {
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Some("jpeg-ls"),
        "1.2.840.10008.1.2.4.90"
        | "1.2.840.10008.1.2.4.91"
        | "1.2.840.10008.1.2.4.201"
        | "1.2.840.10008.1.2.4.202"
        | "1.2.840.10008.1.2.4.203" => Some("jpeg2000"),
        _ => None,
    }
}

/// Frame `frame` (from 0) of the DICOM file `path` as an 8-bit image, monochrome frames through
/// `voi` (see the module's pipeline), colour ones converted.
pub fn decode(
    path: &Path,
    frame: u32,
    voi: Voi,
    color: ColorMode,
) -> Result<DecodedImage, DataError> {
    decode_object(&open(path, false)?, path, frame, voi, color)
}

/// Whether `bytes` (a file's content) are DICOM: the `DICM` magic after the 128-byte preamble.
pub fn is_dicom_bytes(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM".as_slice())
}

/// The header of the DICOM file whose content is `bytes` (its pixel data not read), as [`info`]
/// gives it; errors name `name`.
pub fn info_bytes(bytes: &[u8], name: &Path) -> Result<DicomInfo, DataError> {
    let obj = OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .read_until(tags::PIXEL_DATA)
        .from_reader(bytes)
        .map_err(|e| bad(name, format!("not a readable DICOM file: {e}")))?;
    info_of(name, &obj)
}

/// Every frame of the DICOM file whose content is `bytes`, as [`decode`] makes them; errors
/// name `name`. Nothing is written anywhere.
pub fn decode_bytes(
    bytes: &[u8],
    name: &Path,
    voi: Voi,
    color: ColorMode,
) -> Result<Vec<DecodedImage>, DataError> {
    let obj = OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| bad(name, format!("not a readable DICOM file: {e}")))?;
    let frames = info_of(name, &obj)?.frames;
    (0..frames)
        .map(|f| decode_object(&obj, name, f, voi, color))
        .collect()
}

/// [`decode_frame`], with a panic inside a codec (a crafted or damaged fragment) turned into an
/// error naming the file, so that neither a loader thread nor a server's model thread dies of it.
fn decode_object(
    obj: &DefaultDicomObject,
    path: &Path,
    frame: u32,
    voi: Voi,
    color: ColorMode,
) -> Result<DecodedImage, DataError> {
    let run = std::panic::AssertUnwindSafe(|| decode_frame(obj, path, frame, voi, color));
    std::panic::catch_unwind(run).unwrap_or_else(|_| {
        Err(bad(
            path,
            format!(
                "the decoder failed on frame {} (damaged pixel data?)",
                frame + 1
            ),
        ))
    })
}

fn decode_frame(
    obj: &DefaultDicomObject,
    path: &Path,
    frame: u32,
    voi: Voi,
    color: ColorMode,
) -> Result<DecodedImage, DataError> {
    let info = info_of(path, obj)?;
    if frame >= info.frames {
        return Err(bad(
            path,
            format!("has {} frame(s), no frame {}", info.frames, frame + 1),
        ));
    }
    let uid = obj.meta().transfer_syntax().to_string();
    // Only the frame asked for is decoded: it becomes frame 0 of `decoded`.
    let decoded = obj.decode_pixel_data_frame(frame).map_err(|e| {
        let how = match feature_for(&uid) {
            Some(f) => format!("this build cannot decode it: rebuild with `--features {f}`"),
            None => format!("cannot decode it: {e}"),
        };
        bad(
            path,
            format!("pixel data in {}: {how}", info.transfer_syntax),
        )
    })?;
    let (width, height) = (decoded.columns(), decoded.rows());
    let gray = if decoded.photometric_interpretation().is_monochrome() {
        let raw = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
        let stored: Vec<f32> = decoded
            .to_vec_frame_with_options(0, &raw)
            .map_err(|e| bad(path, format!("frame {}: {e}", frame + 1)))?;
        let rescale = decoded
            .rescale()
            .ok()
            .and_then(|r| r.first().copied())
            .map_or((1.0, 0.0), |r| (r.slope, r.intercept));
        let transform = transform(&decoded, voi, &stored, rescale);
        let monochrome1 = decoded.photometric_interpretation().to_string() == "MONOCHROME1";
        voi::to_gray8(&stored, rescale, &transform, monochrome1)
    } else {
        let img = decoded
            .to_dynamic_image(0)
            .map_err(|e| bad(path, format!("frame {}: {e}", frame + 1)))?;
        return Ok(from_dynamic(img, color));
    };
    let pixels = match color {
        ColorMode::Gray => gray,
        ColorMode::Rgb => gray.iter().flat_map(|&v| [v, v, v]).collect(),
    };
    Ok(DecodedImage {
        width,
        height,
        color,
        pixels,
    })
}

/// The VOI transform `voi` chooses for a frame.
fn transform(
    d: &dicom_pixeldata::DecodedPixelData<'_>,
    voi: Voi,
    stored: &[f32],
    rescale: (f64, f64),
) -> Transform {
    match voi {
        Voi::None => voi::range(stored, rescale),
        Voi::Window { center, width } => Transform::Window {
            center,
            width,
            function: WindowFunction::Linear,
        },
        Voi::Auto => {
            if let Ok(Some(luts)) = d.voi_lut_sequence()
                && let Some(l) = luts.first()
                && !l.data.is_empty()
            {
                return Transform::Lut(Lut {
                    first: l.min_pixel_value,
                    bits: l.bits_stored,
                    table: l.data.clone(),
                });
            }
            if let Ok(Some(windows)) = d.window()
                && let Some(w) = windows.first()
                && w.width >= 1.0
            {
                let function = match d.voi_lut_function().ok().flatten().and_then(|f| f.first()) {
                    Some(VoiLutFunction::LinearExact) => WindowFunction::LinearExact,
                    Some(VoiLutFunction::Sigmoid) => WindowFunction::Sigmoid,
                    _ => WindowFunction::Linear,
                };
                return Transform::Window {
                    center: w.center,
                    width: w.width,
                    function,
                };
            }
            voi::range(stored, rescale)
        }
    }
}

fn from_dynamic(img: image::DynamicImage, color: ColorMode) -> DecodedImage {
    let (width, height) = (img.width(), img.height());
    let pixels = match color {
        ColorMode::Gray => img.into_luma8().into_raw(),
        ColorMode::Rgb => img.into_rgb8().into_raw(),
    };
    DecodedImage {
        width,
        height,
        color,
        pixels,
    }
}
