//! `mura serve`: a trained run or ensemble behind a local web page and a JSON API.
//!
//! - `GET /`: one self-contained page (no external resources) where a person drops the images
//!   of a study (PNG, JPEG, DICOM) and sees each view with its Grad-CAM and probability, the
//!   study's probability and the decision at the model's threshold, and the model's name and
//!   validation figures.
//! - `POST /api/predict` (multipart, one or more `file` fields, an optional `part` such as
//!   `XR_WRIST`; `?cam=0` skips the heat maps): per-view and study results.
//! - `GET /api/model`, `GET /healthz`.
//!
//! Inference runs on one thread of its own behind a bounded queue (429 with `Retry-After` when
//! full); bodies, files per request and pixels per view are limited; every bad upload gets a JSON
//! error naming the file; nothing is written to disk; the default address is 127.0.0.1.
//!
//! ```no_run
//! let options = mura_serve::ServeOptions::default();
//! mura_serve::serve(std::path::Path::new("runs/d169"), &options, |addr| {
//!     println!("http://{addr}/");
//! })?;
//! # Ok::<(), mura_serve::ServeError>(())
//! ```

mod api;
mod engine;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use api::ApiError;
pub use engine::{
    EngineOptions, MAX_VIEWS, ModelInfo, Request, StudyResult, Upload, Validation, ViewResult,
};
use mura_train::run::Weights;

/// The one error type of `mura-serve`: what stops the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Train(#[from] mura_train::TrainError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the server stopped: {0}")]
    Io(#[from] std::io::Error),
}

/// How the server runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub engine: EngineOptions,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Most files in one request.
    pub max_files: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            engine: EngineOptions {
                weights: Weights::Final,
                queue: 8,
                max_pixels: 64 << 20,
                voi: None,
            },
            max_body_bytes: 256 << 20,
            max_files: 32,
        }
    }
}

/// The page, the API and the model behind them (the model's thread stops when the last clone
/// of the router is dropped).
pub fn app(run: &Path, options: &ServeOptions) -> Result<axum::Router, ServeError> {
    let engine = engine::Engine::start(run, options.engine)?;
    Ok(api::router(Arc::new(engine), options))
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Opens `run`, listens on `options.addr`, calls `ready` with the address it got, and serves
/// until the process ends.
pub fn serve(
    run: &Path,
    options: &ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let app = app(run, options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let addr = options.addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        ready(listener.local_addr()?);
        serve_on(listener, app, std::future::pending()).await
    })
}
