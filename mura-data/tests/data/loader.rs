//! Decoding every colour type, corrupt files, hostile headers and the loader's order.

use super::*;

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
