//! The library behind `cargo xtask`: fetching pretrained weights from the Hugging Face hub.
//!
//! `fetch` downloads one registry entry with `hf-hub` into the standard hub cache, then verifies
//! the file before declaring success (a whole safetensors file, every tensor the architecture
//! expects, the digest the registry pins or the lock file recorded) and records its SHA-256 in the
//! lock file. Any failure leaves no partial or rejected file in the cache and is described in one
//! line: no network, 404, truncated download, wrong tensors, digest mismatch, disk full.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use mura_models::hub::{Hub, Locked, Registry, WeightsEntry, verify};

/// The public hub, unless `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Why a fetch failed, in one line.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach {endpoint}: {reason} (no network? HF_ENDPOINT selects a mirror)")]
    Offline { endpoint: String, reason: String },
    #[error("{url}: not found (404); check the repo and revision of `{tag}` in weights.toml")]
    NotFound { url: String, tag: String },
    #[error("{url}: the server answered {status}")]
    Status { url: String, status: u16 },
    #[error("no space left on the device holding {cache} while downloading `{tag}`")]
    DiskFull { cache: String, tag: String },
    #[error("downloading `{tag}` from {url}: {reason}")]
    Download {
        tag: String,
        url: String,
        reason: String,
    },
    #[error("`{tag}`: the downloaded file was refused and removed: {source}")]
    Rejected {
        tag: String,
        source: mura_models::ModelError,
    },
    #[error(transparent)]
    Model(#[from] mura_models::ModelError),
}

/// Where to download from and into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetcher {
    pub endpoint: String,
    pub hub: Hub,
    /// Show a progress bar.
    pub progress: bool,
}

/// A fetched, verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    pub tensors: usize,
    /// `config.json` beside it, when the repository has one.
    pub config: Option<PathBuf>,
}

impl Fetcher {
    /// `HF_ENDPOINT` (or the public hub) and `$HF_HOME/hub`.
    pub fn from_env() -> Self {
        Self {
            endpoint: std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.into()),
            hub: Hub::from_env(),
            progress: true,
        }
    }

    fn url(&self, e: &WeightsEntry, file: &str) -> String {
        format!(
            "{}/{}/resolve/{}/{file}",
            self.endpoint.trim_end_matches('/'),
            e.repo,
            e.revision
        )
    }

    /// Downloads, verifies and records `tag`.
    pub fn fetch(&self, registry: &Registry, tag: &str) -> Result<Fetched, FetchError> {
        let e = registry.get(tag)?;
        let api = ApiBuilder::from_cache(hf_hub::Cache::new(self.hub.cache.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_progress(self.progress)
            .build()
            .map_err(|err| self.describe(e, &e.file, err))?;
        let repo = api.repo(Repo::with_revision(
            e.repo.clone(),
            RepoType::Model,
            e.revision.clone(),
        ));
        let repo_dir = self.hub.repo_dir(e);
        let ref_file = repo_dir.join("refs").join(&e.revision);
        let previous_ref = std::fs::read(&ref_file).ok();
        let undo = |path: Option<&Path>| {
            if let Some(p) = path {
                remove_download(p);
            }
            remove_partials(&repo_dir);
            match &previous_ref {
                Some(bytes) => {
                    let _ = std::fs::write(&ref_file, bytes);
                }
                None => {
                    let _ = std::fs::remove_file(&ref_file);
                }
            }
        };
        let path = match repo.download(&e.file) {
            Ok(p) => p,
            Err(err) => {
                undo(None);
                return Err(self.describe(e, &e.file, err));
            }
        };
        let checked = verify(e, &path).and_then(|v| {
            self.hub.check_digest(e, &path, &v.sha256)?;
            Ok(v)
        });
        let v = match checked {
            Ok(v) => v,
            Err(source) => {
                undo(Some(&path));
                return Err(FetchError::Rejected {
                    tag: e.tag.clone(),
                    source,
                });
            }
        };
        let commit = path
            .parent()
            .and_then(Path::file_name)
            .map(|c| c.to_string_lossy().to_string())
            .unwrap_or_default();
        self.hub.record(
            &e.tag,
            Locked {
                sha256: v.sha256.clone(),
                bytes: v.bytes,
                commit,
            },
        )?;
        // timm repositories carry config.json (the pretrained config); it is optional here.
        let config = repo.download("config.json").ok();
        remove_partials(&repo_dir);
        Ok(Fetched {
            path,
            sha256: v.sha256,
            bytes: v.bytes,
            tensors: v.tensors,
            config,
        })
    }

    fn describe(&self, e: &WeightsEntry, file: &str, err: ApiError) -> FetchError {
        let url = self.url(e, file);
        match err {
            ApiError::RequestError(boxed) => match *boxed {
                ureq::Error::Status(404, _) => FetchError::NotFound {
                    url,
                    tag: e.tag.clone(),
                },
                ureq::Error::Status(status, _) => FetchError::Status { url, status },
                ureq::Error::Transport(t) => FetchError::Offline {
                    endpoint: self.endpoint.clone(),
                    reason: t.to_string(),
                },
            },
            ApiError::IoError(io) if io.raw_os_error() == Some(28) => FetchError::DiskFull {
                cache: self.hub.cache.display().to_string(),
                tag: e.tag.clone(),
            },
            other => FetchError::Download {
                tag: e.tag.clone(),
                url,
                reason: other.to_string(),
            },
        }
    }
}

/// Removes a downloaded snapshot file and the blob it points to.
fn remove_download(pointer: &Path) {
    if let Ok(blob) = std::fs::canonicalize(pointer)
        && blob != pointer
    {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(pointer);
}

/// Removes unfinished downloads (`*.part`) and their lock files from a repository's blobs.
fn remove_partials(repo_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(repo_dir.join("blobs")) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("part" | "lock")
        ) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One line per registry entry: tag, architecture, repository, and whether it is cached.
pub fn list(registry: &Registry, hub: &Hub) -> Vec<String> {
    registry
        .weights
        .iter()
        .map(|e| {
            let state = match (hub.cached(e), hub.locked(&e.tag).ok().flatten()) {
                (Some(p), Some(l)) => format!(
                    "cached, sha256 {} ({})",
                    &l.sha256[..12.min(l.sha256.len())],
                    p.display()
                ),
                (Some(p), None) => format!("cached, not verified ({})", p.display()),
                (None, _) => "not cached".into(),
            };
            format!("{:<22} {:<13} {:<28} {state}", e.tag, e.arch, e.repo)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_disk_is_named_as_such() {
        let f = Fetcher {
            endpoint: "http://127.0.0.1:9".into(),
            hub: Hub::new("/cache/hub".into()),
            progress: false,
        };
        let r = Registry::builtin().unwrap();
        let e = r.get("resnet50.tv_in1k").unwrap();
        let err = f.describe(
            e,
            &e.file,
            ApiError::IoError(std::io::Error::from_raw_os_error(28)),
        );
        assert!(matches!(err, FetchError::DiskFull { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("no space left") && msg.contains("/cache/hub"),
            "{msg}"
        );
    }
}
