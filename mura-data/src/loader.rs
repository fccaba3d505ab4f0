//! Streaming image loader: decodes PNG and JPEG files of any colour type and bit depth, and DICOM
//! files (see [`crate::dicom`]), on worker threads, through a bounded prefetch window, in a per-epoch seeded order.
//!
//! The data set is never held in memory: at most `prefetch` decoded images exist at once. The
//! order of the samples depends only on the seed and the epoch, never on the number of threads or
//! on which thread finished first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::DataError;
use crate::dicom::Voi;
use crate::rng::{shuffle, stream_rng};

/// The pixel format images are converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorMode {
    /// One 8-bit channel (luminance for colour files, scaled down for 16-bit files).
    #[default]
    Gray,
    /// Three 8-bit channels (gray replicated for grayscale files).
    Rgb,
}

impl ColorMode {
    pub fn channels(self) -> usize {
        match self {
            ColorMode::Gray => 1,
            ColorMode::Rgb => 3,
        }
    }
}

/// A decoded 8-bit image, rows top to bottom, channels interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedImage {
    pub width: u32,
    pub height: u32,
    pub color: ColorMode,
    pub pixels: Vec<u8>,
}

/// The largest width or height [`decode_file`] accepts (MURA's images are at most 512).
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// Decodes one PNG or JPEG file (the format is read from its content), or a DICOM file or frame
/// (`FILE#N`) with its own VOI settings, into 8-bit gray or RGB.
///
/// A missing, truncated or corrupt file is an error naming the path. A header claiming more than
/// [`MAX_IMAGE_SIDE`] pixels on a side (a decompression bomb) is refused before anything is
/// allocated; no PNG or JPEG decode may allocate more than 512 MiB (a DICOM frame, decoded one
/// at a time, up to 4 bytes a pixel besides its file).
pub fn decode_file(path: &Path, color: ColorMode) -> Result<DecodedImage, DataError> {
    decode_file_with(path, color, Voi::Auto)
}

/// [`decode_file`] with DICOM frames taken through `voi`.
pub fn decode_file_with(
    path: &Path,
    color: ColorMode,
    voi: Voi,
) -> Result<DecodedImage, DataError> {
    let (file, frame) = crate::dicom::split_frame(path);
    if frame.is_some() || crate::dicom::is_dicom(&file) {
        return crate::dicom::decode(&file, frame.unwrap_or(0), voi, color);
    }
    let reader = image::ImageReader::open(path).map_err(|e| DataError::io(path, e))?;
    decode(reader, path, color)
}

/// [`decode_file`] on the bytes of a file; errors name `path`.
pub fn decode_bytes(
    bytes: &[u8],
    path: &Path,
    color: ColorMode,
) -> Result<DecodedImage, DataError> {
    decode(
        image::ImageReader::new(std::io::Cursor::new(bytes)),
        path,
        color,
    )
}

fn decode<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
    path: &Path,
    color: ColorMode,
) -> Result<DecodedImage, DataError> {
    let decode_err = |e: image::ImageError| DataError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    let img = reader.decode().map_err(decode_err)?;
    let (width, height) = (img.width(), img.height());
    let pixels = match color {
        ColorMode::Gray => img.into_luma8().into_raw(),
        ColorMode::Rgb => img.into_rgb8().into_raw(),
    };
    Ok(DecodedImage {
        width,
        height,
        color,
        pixels,
    })
}

/// How the loader runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderConfig {
    /// Worker threads decoding in parallel (at least 1).
    pub threads: usize,
    /// Most samples decoded ahead of the consumer (at least 1).
    pub prefetch: usize,
    pub color: ColorMode,
    /// Shuffle the order each epoch, from `seed` and the epoch number.
    pub shuffle: bool,
    pub seed: u64,
    /// Skip (and count) files that cannot be read or decoded instead of failing.
    pub skip_unreadable: bool,
    /// How DICOM frames become display values.
    pub voi: Voi,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            threads: 2,
            prefetch: 16,
            color: ColorMode::Gray,
            shuffle: true,
            seed: 0,
            skip_unreadable: false,
            voi: Voi::Auto,
        }
    }
}

/// One loaded item: its index in the loader's file list and what the transform made of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<T = DecodedImage> {
    pub index: usize,
    pub value: T,
}

/// Streams the images of a fixed list of files, epoch after epoch.
#[derive(Debug, Clone)]
pub struct Loader {
    files: Arc<Vec<PathBuf>>,
    config: LoaderConfig,
}

impl Loader {
    pub fn new(files: Vec<PathBuf>, config: LoaderConfig) -> Result<Self, DataError> {
        if config.threads == 0 {
            return Err(DataError::InvalidConfig {
                what: "loader threads",
                reason: "0 threads: at least 1 is needed".into(),
            });
        }
        if config.prefetch == 0 {
            return Err(DataError::InvalidConfig {
                what: "loader prefetch",
                reason: "0 samples ahead: at least 1 is needed".into(),
            });
        }
        Ok(Self {
            files: Arc::new(files),
            config,
        })
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The order in which `epoch` visits the files (indices into [`Loader::files`]).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.files.len()).collect();
        if self.config.shuffle {
            shuffle(&mut stream_rng(self.config.seed, &[epoch]), &mut order);
        }
        order
    }

    /// Decoded images of one epoch, in [`Loader::order`].
    pub fn epoch(&self, epoch: u64) -> Epoch<DecodedImage> {
        self.epoch_with(epoch, |_, image| Ok(image))
    }

    /// Like [`Loader::epoch`], with `transform(index, image)` applied on the worker threads (resize,
    /// augmentation, normalisation), so the consumer only receives finished samples.
    pub fn epoch_with<T, F>(&self, epoch: u64, transform: F) -> Epoch<T>
    where
        T: Send + 'static,
        F: Fn(usize, DecodedImage) -> Result<T, DataError> + Send + Sync + 'static,
    {
        self.epoch_from(epoch, 0, transform)
    }

    /// Like [`Loader::epoch_with`], starting at position `start` of the epoch's order: the rest of
    /// an interrupted epoch, in the order it would have had.
    pub fn epoch_from<T, F>(&self, epoch: u64, start: usize, transform: F) -> Epoch<T>
    where
        T: Send + 'static,
        F: Fn(usize, DecodedImage) -> Result<T, DataError> + Send + Sync + 'static,
    {
        let mut order = self.order(epoch);
        order.drain(..start.min(order.len()));
        let order = Arc::new(order);
        let shared = Arc::new(Shared {
            next: AtomicUsize::new(0),
            cancel: AtomicBool::new(false),
            permits: Mutex::new(self.config.prefetch),
            freed: Condvar::new(),
        });
        let (tx, rx) = sync_channel(self.config.prefetch);
        let transform = Arc::new(transform);
        let workers = (0..self.config.threads.min(order.len().max(1)))
            .map(|_| {
                let job = Job {
                    files: Arc::clone(&self.files),
                    order: Arc::clone(&order),
                    shared: Arc::clone(&shared),
                    tx: tx.clone(),
                    color: self.config.color,
                    voi: self.config.voi,
                    transform: Arc::clone(&transform),
                };
                std::thread::spawn(move || job.run())
            })
            .collect();
        Epoch {
            len: order.len(),
            order,
            rx: Some(rx),
            shared,
            workers,
            buffer: BTreeMap::new(),
            next: 0,
            skip_unreadable: self.config.skip_unreadable,
            skipped: Vec::new(),
        }
    }
}

struct Shared {
    next: AtomicUsize,
    cancel: AtomicBool,
    /// Samples that may still be claimed before the consumer takes one: bounds memory.
    permits: Mutex<usize>,
    freed: Condvar,
}

impl Shared {
    /// Waits for a permit; false when the epoch was cancelled.
    fn acquire(&self) -> bool {
        let Ok(mut permits) = self.permits.lock() else {
            return false;
        };
        while *permits == 0 && !self.cancel.load(Ordering::Acquire) {
            permits = match self.freed.wait(permits) {
                Ok(p) => p,
                Err(_) => return false,
            };
        }
        if self.cancel.load(Ordering::Acquire) {
            return false;
        }
        *permits -= 1;
        true
    }

    fn release(&self) {
        if let Ok(mut permits) = self.permits.lock() {
            *permits += 1;
        }
        self.freed.notify_one();
    }
}

type Message<T> = (usize, Result<T, DataError>);

struct Job<T, F> {
    files: Arc<Vec<PathBuf>>,
    order: Arc<Vec<usize>>,
    shared: Arc<Shared>,
    tx: SyncSender<Message<T>>,
    color: ColorMode,
    voi: Voi,
    transform: Arc<F>,
}

impl<T, F> Job<T, F>
where
    F: Fn(usize, DecodedImage) -> Result<T, DataError>,
{
    fn run(self) {
        while self.shared.acquire() {
            let pos = self.shared.next.fetch_add(1, Ordering::AcqRel);
            let Some(&index) = self.order.get(pos) else {
                self.shared.release();
                return;
            };
            let result = decode_file_with(&self.files[index], self.color, self.voi)
                .and_then(|image| (self.transform)(index, image));
            if self.tx.send((pos, result)).is_err() {
                return;
            }
        }
    }
}

/// The samples of one epoch, as an iterator. Dropping it stops the workers.
pub struct Epoch<T> {
    len: usize,
    order: Arc<Vec<usize>>,
    /// `None` once dropping: workers see their sends fail and stop.
    rx: Option<Receiver<Message<T>>>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    buffer: BTreeMap<usize, Result<T, DataError>>,
    next: usize,
    skip_unreadable: bool,
    skipped: Vec<DataError>,
}

impl<T> std::fmt::Debug for Epoch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoch")
            .field("len", &self.len)
            .field("next", &self.next)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

impl<T> Epoch<T> {
    /// Number of files this epoch visits (skipped ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The unreadable files skipped so far (only when `skip_unreadable` is on), with why.
    pub fn skipped(&self) -> &[DataError] {
        &self.skipped
    }

    /// Takes the unreadable files skipped so far out of the epoch.
    pub fn take_skipped(&mut self) -> Vec<DataError> {
        std::mem::take(&mut self.skipped)
    }
}

impl<T> Iterator for Epoch<T> {
    type Item = Result<Sample<T>, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.next >= self.len {
                return None;
            }
            if let Some(result) = self.buffer.remove(&self.next) {
                let index = self.order[self.next];
                self.next += 1;
                self.shared.release();
                match result {
                    Ok(value) => return Some(Ok(Sample { index, value })),
                    Err(
                        e @ (DataError::Decode { .. }
                        | DataError::Dicom { .. }
                        | DataError::Io { .. }),
                    ) if self.skip_unreadable => {
                        self.skipped.push(e);
                        continue;
                    }
                    Err(e) => {
                        // Stop after the first error: the caller sees it once.
                        self.next = self.len;
                        return Some(Err(e));
                    }
                }
            }
            match self.rx.as_ref().map(Receiver::recv) {
                Some(Ok((pos, result))) => {
                    self.buffer.insert(pos, result);
                }
                Some(Err(_)) | None => {
                    self.next = self.len;
                    return Some(Err(DataError::WorkerLost));
                }
            }
        }
    }
}

impl<T> Drop for Epoch<T> {
    fn drop(&mut self) {
        self.shared.cancel.store(true, Ordering::Release);
        self.shared.freed.notify_all();
        // With the receiver gone a worker's next send fails and it returns; one waiting for a
        // permit sees the cancel flag.
        self.rx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
