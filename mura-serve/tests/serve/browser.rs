//! The page in a real browser: a headless Chromium, driven by puppeteer-core from Node
//! (`tools/browser/serve_page.mjs`), loads the page from a server on 127.0.0.1, uploads a study
//! of a synthetic radiograph and the same picture as a DICOM file through the file input, and
//! sees the study's probability, the decision and both heat maps appear; it writes a screenshot (`target/tmp/mura-serve-page.png`) and every
//! request the page makes stays on the server's origin.

use std::path::PathBuf;
use std::process::Command;

use super::common::{Server, first_png, run};

#[test]
#[ignore = "needs Node with puppeteer-core (npm install in tools/browser) and a headless Chromium; .ci/run installs them"]
fn the_page_scores_an_uploaded_radiograph_in_a_browser() {
    let app = mura_serve::app(&run().2, &mura_serve::ServeOptions::default()).unwrap();
    let server = Server::start(app);
    let addr = server.addr;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = repo.join("tools/browser/serve_page.mjs");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mura-serve-page.png");
    let image = first_png(&run().1);
    let gray = image::open(&image).unwrap().into_luma8();
    let dir = tempfile::tempdir().unwrap();
    let dcm = dir.path().join("view2.dcm");
    let spec = mura_data::dicom::WriteSpec {
        window: Some((128.0, 256.0)),
        ..mura_data::dicom::WriteSpec::gray8(
            gray.width() as u16,
            gray.height() as u16,
            gray.into_raw(),
            "1.2.77",
        )
    };
    mura_data::dicom::write(&dcm, &spec).unwrap();
    let o = Command::new("node")
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .arg(&shot)
        .arg(&image)
        .arg(&dcm)
        .output()
        .expect("node runs");
    drop(server);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let shown: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(shown["error"], "", "{shown}");
    assert_eq!(shown["model"], "tiny");
    let p: f64 = shown["probability"].as_str().unwrap().parse().unwrap();
    assert!((0.0..=1.0).contains(&p), "{shown}");
    let decision = shown["decision"].as_str().unwrap();
    assert!(
        decision.starts_with("abnormal") || decision.starts_with("normal"),
        "{decision}"
    );
    let overlays = shown["overlays"].as_array().unwrap();
    assert_eq!(overlays.len(), 2, "the PNG and the DICOM view: {shown}");
    assert!(overlays.iter().all(|o| o[0].as_u64().unwrap() > 0));
    let origins = shown["origins"].as_array().unwrap();
    let own = format!("http://{addr}");
    assert!(
        origins.iter().all(|o| o == own.as_str() || o == "null"),
        "{origins:?}"
    );
    let png = image::open(&shot).unwrap();
    assert!(png.width() >= 1000 && png.height() > 300);
    eprintln!("screenshot: {}", shot.display());
}
