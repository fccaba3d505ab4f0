//! The API in-process: the page, the model's description, predictions of PNG and DICOM uploads,
//! and the JSON error of every refusal (not an image, truncated, too large, too many files, a
//! DICOM syntax the build lacks, no files, a busy queue).

use super::common::{content_type, first_png, multipart, run};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use mura_data::dicom::{Pixels, WriteSpec, write};
use mura_serve::{ServeOptions, app};
use tower::ServiceExt;

async fn call(
    app: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let r = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = r.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes().to_vec(),
    )
}

fn post(body: Vec<u8>, query: &str) -> Request<Body> {
    Request::post(format!("/api/predict{query}"))
        .header(header::CONTENT_TYPE, content_type())
        .body(Body::from(body))
        .unwrap()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn png_bytes() -> Vec<u8> {
    std::fs::read(first_png(&run().1)).unwrap()
}

/// A 2-frame DICOM file and a DICOM file in JPEG-LS (which the default build cannot decode).
fn dicoms() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let multi = dir.path().join("multi.dcm");
    let spec = WriteSpec {
        frames: 2,
        pixels: Pixels::U8((0..2 * 40 * 30).map(|i| (i % 253) as u8).collect()),
        ..WriteSpec::gray8(40, 30, vec![], "1.2.3")
    };
    write(&multi, &spec).unwrap();
    let plain = std::fs::read(&multi).unwrap();
    // The same header with the JPEG-LS syntax UID in the file meta group: decoding must refuse.
    let mut obj = dicom_object::open_file(&multi).unwrap().into_inner();
    let fragments =
        dicom_core::value::PixelFragmentSequence::new(vec![], vec![vec![0xFF, 0xD8, 0xFF, 0xF7]]);
    obj.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::PIXEL_DATA,
        dicom_core::VR::OB,
        dicom_core::value::Value::PixelSequence(fragments),
    ));
    let meta = dicom_object::FileMetaTableBuilder::new()
        .transfer_syntax("1.2.840.10008.1.2.4.80")
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.1.1")
        .media_storage_sop_instance_uid("1.2.3.9");
    let jls = dir.path().join("jls.dcm");
    obj.with_meta(meta).unwrap().write_to_file(&jls).unwrap();
    (plain, std::fs::read(jls).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_model_and_health_answer() {
    let app = app(&run().2, &ServeOptions::default()).unwrap();
    let (s, _, body) = call(&app, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("<script>") && page.contains("/api/predict"));
    for external in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!page.contains(external), "the page loads {external}…");
    }
    let (s, _, body) = call(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (s, json(&body)["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (_, _, body) = call(
        &app,
        Request::get("/api/model").body(Body::empty()).unwrap(),
    )
    .await;
    let m = json(&body);
    assert_eq!(m["name"], "tiny");
    assert_eq!(m["kind"], "run");
    assert_eq!(m["architectures"][0], "alexnet-style");
    assert!(m["threshold"].as_f64().unwrap() > 0.0);
    assert_eq!(m["validation"][0]["epoch"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_of_png_and_dicom_views_is_scored_with_heat_maps() {
    let app = app(&run().2, &ServeOptions::default()).unwrap();
    let png = png_bytes();
    let (dcm, _) = dicoms();
    let body = multipart(&[("a.png", &png), ("b.dcm", &dcm)], &[("part", "XR_WRIST")]);
    let (s, _, body) = call(&app, post(body, "")).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r = json(&body);
    let images = r["images"].as_array().unwrap();
    assert_eq!(images.len(), 3, "the PNG and both frames");
    assert_eq!(
        (images[1]["frame"].as_u64(), images[2]["frame"].as_u64()),
        (Some(1), Some(2))
    );
    let probs: Vec<f64> = images
        .iter()
        .map(|i| i["probability"].as_f64().unwrap())
        .collect();
    assert!(probs.iter().all(|p| (0.0..=1.0).contains(p)));
    let mean = probs.iter().sum::<f64>() / 3.0;
    assert!((r["probability"].as_f64().unwrap() - mean).abs() < 1e-12);
    let t = r["threshold"].as_f64().unwrap();
    assert_eq!(r["abnormal"].as_bool().unwrap(), mean > t);
    let overlay = images[0]["overlay"].as_str().unwrap();
    let b64 = overlay.strip_prefix("data:image/png;base64,").unwrap();
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert!(image::load_from_memory(&png).is_ok());
    // Without heat maps, the same probabilities.
    let body = multipart(&[("a.png", &png_bytes())], &[]);
    let (_, _, body) = call(&app, post(body, "?cam=0")).await;
    let r = json(&body);
    assert!(r["images"][0].get("overlay").is_none());
    assert_eq!(r["images"][0]["probability"].as_f64().unwrap(), probs[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_upload_gets_a_json_error_naming_it() {
    let options = ServeOptions {
        max_body_bytes: 200_000,
        max_files: 3,
        ..ServeOptions::default()
    };
    let app = app(&run().2, &options).unwrap();
    let png = png_bytes();
    let (_, jls) = dicoms();
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (
            multipart(&[("notes.txt", b"hello")], &[]),
            StatusCode::BAD_REQUEST,
            "notes.txt: ",
        ),
        (
            multipart(&[("cut.png", &png[..png.len() / 2])], &[]),
            StatusCode::BAD_REQUEST,
            "cut.png: ",
        ),
        (
            multipart(&[("jls.dcm", &jls)], &[]),
            StatusCode::BAD_REQUEST,
            "--features jpeg-ls",
        ),
        (multipart(&[], &[]), StatusCode::BAD_REQUEST, "no images"),
        (
            multipart(&[("a.png", &png)], &[("part", "XR_KNEE")]),
            StatusCode::BAD_REQUEST,
            "part: ",
        ),
        (
            multipart(&[("a.png", &png)], &[("comment", "x")]),
            StatusCode::BAD_REQUEST,
            "unknown field `comment`",
        ),
        (
            multipart(&[("a.png", png.as_slice()); 4], &[]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "more than 3 files",
        ),
        (
            multipart(&[("big.png", &vec![0u8; 300_000])], &[]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 200000 bytes",
        ),
    ];
    for (body, status, needle) in cases {
        let (s, _, out) = call(&app, post(body, "")).await;
        let e = json(&out);
        let msg = e["error"].as_str().unwrap_or_default();
        assert_eq!(s, status, "{msg}");
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
    let not_multipart = Request::post("/api/predict").body(Body::from("x")).unwrap();
    let (s, _, out) = call(&app, not_multipart).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(json(&out)["error"].as_str().unwrap().contains("multipart"));
    // A view over the pixel limit.
    let tight = ServeOptions {
        engine: mura_serve::EngineOptions {
            max_pixels: 100,
            ..ServeOptions::default().engine
        },
        ..ServeOptions::default()
    };
    let small = mura_serve::app(&run().2, &tight).unwrap();
    let (s, _, out) = call(&small, post(multipart(&[("a.png", &png)], &[]), "")).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(json(&out)["error"].as_str().unwrap().contains("a.png: "));
    // More frames than a request may hold.
    let dir = tempfile::tempdir().unwrap();
    let many = dir.path().join("many.dcm");
    let spec = WriteSpec {
        frames: 65,
        pixels: Pixels::U8(vec![7; 65 * 4]),
        ..WriteSpec::gray8(2, 2, vec![], "1.2.5")
    };
    write(&many, &spec).unwrap();
    let many = std::fs::read(many).unwrap();
    let (s, _, out) = call(&app, post(multipart(&[("many.dcm", &many)], &[]), "")).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let e = json(&out)["error"].as_str().unwrap().to_string();
    assert!(
        e.contains("many.dcm: 65 frame(s)") && e.contains("64 views"),
        "{e}"
    );
    // A DICOM file is refused by its header, before its pixels are decoded.
    let (dcm, _) = dicoms();
    let (s, _, out) = call(&small, post(multipart(&[("m.dcm", &dcm)], &[]), "")).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let e = json(&out)["error"].as_str().unwrap().to_string();
    assert!(e.contains("m.dcm: 2 frame(s) of 40×30 pixels"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_with_retry_after() {
    let options = ServeOptions {
        engine: mura_serve::EngineOptions {
            queue: 0,
            ..ServeOptions::default().engine
        },
        ..ServeOptions::default()
    };
    let app = app(&run().2, &options).unwrap();
    // Twelve studies of four large noisy views with heat maps at once (each takes the model a
    // good part of a second): the model takes one at a time and no request may wait, so those
    // that arrive while it works are turned away.
    let noise = image::GrayImage::from_fn(1600, 1600, |x, y| {
        image::Luma([((x * 7919 + y * 104_729) % 251) as u8])
    });
    let mut png = Vec::new();
    noise
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let body = multipart(&[("a.png", png.as_slice()); 4], &[]);
    let calls = (0..12).map(|_| {
        let (app, body) = (app.clone(), body.clone());
        tokio::spawn(async move { call(&app, post(body, "")).await })
    });
    let calls: Vec<_> = calls.collect();
    let mut codes = Vec::new();
    for c in calls {
        let (s, headers, out) = c.await.unwrap();
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(headers[header::RETRY_AFTER], "1");
            assert!(json(&out)["error"].as_str().unwrap().contains("busy"));
        }
        codes.push(s);
    }
    assert!(
        codes
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS)
    );
    assert!(codes.contains(&StatusCode::OK), "{codes:?}");
    assert!(codes.contains(&StatusCode::TOO_MANY_REQUESTS), "{codes:?}");
}
