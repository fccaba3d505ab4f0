//! The HTTP side: routes, the multipart upload, and the JSON error of every refusal.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Multipart, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::ServeOptions;
use crate::engine::{Engine, Request, Upload};

/// The page: HTML, CSS and script in one file, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// An upload that is not a readable image (or a DICOM file this build cannot decode);
    /// `reason` names the file.
    #[error("{reason}")]
    BadUpload { file: String, reason: String },
    /// A request without images, or a malformed one.
    #[error("{0}")]
    BadRequest(String),
    /// A body, a file count or an image over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// The queue is full: try again shortly.
    #[error("the server is busy: every queue slot is taken; retry shortly")]
    Busy,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadUpload { .. } | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Busy => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let file = match &self {
            ApiError::BadUpload { file, .. } if !file.is_empty() => Some(file.clone()),
            _ => None,
        };
        let body = Json(serde_json::json!({ "error": self.to_string(), "file": file }));
        let mut r = (self.status(), body).into_response();
        if self == ApiError::Busy {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

#[derive(Clone)]
struct Shared {
    engine: Arc<Engine>,
    max_files: usize,
    max_body: usize,
}

pub(crate) fn router(engine: Arc<Engine>, options: &ServeOptions) -> Router {
    let shared = Shared {
        engine,
        max_files: options.max_files,
        max_body: options.max_body_bytes,
    };
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/api/model", get(model))
        .route("/api/predict", post(predict))
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .with_state(shared)
}

async fn model(State(s): State<Shared>) -> impl IntoResponse {
    Json(s.engine.info.clone())
}

#[derive(Debug, Deserialize)]
struct PredictQuery {
    cam: Option<u8>,
}

async fn predict(
    State(s): State<Shared>,
    Query(q): Query<PredictQuery>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart
        .map_err(|e| ApiError::BadRequest(format!("expected a multipart/form-data body: {e}")))?;
    let mut request = Request {
        uploads: Vec::new(),
        part: None,
        cam: q.cam.unwrap_or(1) != 0,
    };
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| field_error(&e, s.max_body))?
    {
        match field.name().unwrap_or_default() {
            "file" => {
                if request.uploads.len() == s.max_files {
                    return Err(ApiError::TooLarge(format!(
                        "more than {} files in one request",
                        s.max_files
                    )));
                }
                let name = field.file_name().map_or_else(
                    || format!("file {}", request.uploads.len() + 1),
                    str::to_string,
                );
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| field_error(&e, s.max_body))?;
                request.uploads.push(Upload {
                    name,
                    bytes: bytes.to_vec(),
                });
            }
            "part" => {
                let text = field
                    .text()
                    .await
                    .map_err(|e| field_error(&e, s.max_body))?;
                if !text.trim().is_empty() {
                    request.part = Some(
                        text.trim()
                            .parse()
                            .map_err(|e| ApiError::BadRequest(format!("part: {e}")))?,
                    );
                }
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown field `{other}` (expected `file` and optionally `part`)"
                )));
            }
        }
    }
    if request.uploads.is_empty() {
        return Err(ApiError::BadRequest(
            "no images: send one or more `file` fields".into(),
        ));
    }
    let reply = s.engine.submit(request)?;
    let result = reply
        .await
        .map_err(|_| ApiError::Internal("the model's thread dropped the request".into()))??;
    Ok(Json(result).into_response())
}

fn field_error(e: &axum::extract::multipart::MultipartError, max_body: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!("the request is larger than {max_body} bytes"))
    } else {
        ApiError::BadRequest(format!("a malformed multipart body: {}", e.body_text()))
    }
}
