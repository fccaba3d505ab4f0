//! Pretrained weights by tag: the registry (`weights.toml`, compiled in), the local Hugging Face
//! hub cache (`$HF_HOME/hub`), verification of a file against the architecture it must fit, and
//! the lock file of SHA-256 digests. Nothing here touches the network: `cargo xtask fetch-weights`
//! downloads; training only reads the cache.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use hf_hub::{Cache, Repo, RepoType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::{LoadOptions, check};
use crate::{Arch, Model, ModelConfig, ModelError};

/// The registry shipped with the crate.
pub const BUILTIN_REGISTRY: &str = include_str!("../weights.toml");

/// Name of the lock file inside the hub cache folder.
pub const LOCK_FILE: &str = "mura-weights.lock";

fn main_branch() -> String {
    "main".into()
}

fn model_file() -> String {
    "model.safetensors".into()
}

fn imagenet_classes() -> usize {
    1000
}

/// One set of weights the registry knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsEntry {
    /// The name users give (`densenet121.tv_in1k`).
    pub tag: String,
    /// Hub repository (`timm/densenet121.tv_in1k`).
    pub repo: String,
    #[serde(default = "model_file")]
    pub file: String,
    /// Branch or commit.
    #[serde(default = "main_branch")]
    pub revision: String,
    /// The architecture the file must fit (`mura model list`).
    pub arch: String,
    #[serde(default = "imagenet_classes")]
    pub num_classes: usize,
    /// The file's SHA-256 (lower-case hex) when pinned.
    #[serde(default)]
    pub sha256: Option<String>,
}

impl WeightsEntry {
    /// The command that puts these weights in the cache.
    pub fn fetch_command(&self) -> String {
        format!("cargo xtask fetch-weights {}", self.tag)
    }

    fn hub_repo(&self) -> Repo {
        Repo::with_revision(self.repo.clone(), RepoType::Model, self.revision.clone())
    }

    /// The model configuration the file must fit.
    pub fn model_config(&self) -> Result<ModelConfig, ModelError> {
        Ok(ModelConfig {
            num_classes: self.num_classes,
            ..ModelConfig::new(Arch::from_name(&self.arch)?)
        })
    }
}

/// The weights `cargo xtask fetch-weights` can download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub weights: Vec<WeightsEntry>,
}

impl Registry {
    /// The registry compiled into the crate (`mura-models/weights.toml`).
    pub fn builtin() -> Result<Self, ModelError> {
        Self::parse(BUILTIN_REGISTRY)
    }

    /// Parses a registry; every architecture must be known.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let r: Self = toml::from_str(text).map_err(|e| ModelError::BadConfig {
            reason: format!("weights registry: {e}"),
        })?;
        for e in &r.weights {
            Arch::from_name(&e.arch)?;
        }
        Ok(r)
    }

    pub fn tags(&self) -> Vec<&str> {
        self.weights.iter().map(|e| e.tag.as_str()).collect()
    }

    /// The entry of `tag`; an unknown tag is an error listing the known ones.
    pub fn get(&self, tag: &str) -> Result<&WeightsEntry, ModelError> {
        self.weights
            .iter()
            .find(|e| e.tag == tag)
            .ok_or_else(|| ModelError::UnknownWeights {
                tag: tag.to_string(),
                known: self.tags().join(", "),
            })
    }
}

/// A file whose SHA-256 is not the one pinned or recorded for its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestMismatch {
    pub tag: String,
    pub path: String,
    pub expected: String,
    pub found: String,
    /// `weights.toml` or the lock file's path.
    pub source_of_truth: String,
}

impl std::fmt::Display for DigestMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: SHA-256 {} differs from {} recorded for `{}` in {}; refusing the file",
            self.path, self.found, self.expected, self.tag, self.source_of_truth
        )
    }
}

/// What a lock file remembers of one verified file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locked {
    pub sha256: String,
    pub bytes: u64,
    /// The commit the file came from.
    pub commit: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LockFile {
    #[serde(default)]
    weights: BTreeMap<String, Locked>,
}

/// A verified weights file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub sha256: String,
    pub bytes: u64,
    pub tensors: usize,
}

/// The local hub cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    /// The `hub` folder (`$HF_HOME/hub`).
    pub cache: PathBuf,
}

impl Hub {
    pub fn new(cache: PathBuf) -> Self {
        Self { cache }
    }

    /// `$HF_HOME/hub`, or `~/.cache/huggingface/hub`.
    pub fn from_env() -> Self {
        Self::new(Cache::from_env().path().clone())
    }

    /// The repository's folder in the cache (`models--timm--densenet121.tv_in1k`).
    pub fn repo_dir(&self, e: &WeightsEntry) -> PathBuf {
        self.cache.join(e.hub_repo().folder_name())
    }

    /// The cached file of `e`, if present.
    pub fn cached(&self, e: &WeightsEntry) -> Option<PathBuf> {
        Cache::new(self.cache.clone())
            .repo(e.hub_repo())
            .get(&e.file)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.cache.join(LOCK_FILE)
    }

    fn read_lock(&self) -> Result<LockFile, ModelError> {
        let path = self.lock_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ModelError::Unreadable {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LockFile::default()),
            Err(e) => Err(ModelError::Unreadable {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// What the lock file holds for `tag`.
    pub fn locked(&self, tag: &str) -> Result<Option<Locked>, ModelError> {
        Ok(self.read_lock()?.weights.remove(tag))
    }

    /// Records `tag`'s digest in the lock file (written to a temporary name and renamed).
    pub fn record(&self, tag: &str, locked: Locked) -> Result<(), ModelError> {
        let mut lock = self.read_lock()?;
        lock.weights.insert(tag.to_string(), locked);
        let path = self.lock_path();
        let unwritable = |reason: String| ModelError::Unwritable {
            path: path.display().to_string(),
            reason,
        };
        let text = toml::to_string(&lock).map_err(|e| unwritable(e.to_string()))?;
        let tmp = path.with_extension("lock.tmp");
        std::fs::create_dir_all(&self.cache).map_err(|e| unwritable(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| unwritable(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| unwritable(e.to_string()))
    }

    /// Refuses `found` when the registry pins another digest or the lock file recorded another.
    pub fn check_digest(
        &self,
        e: &WeightsEntry,
        path: &Path,
        found: &str,
    ) -> Result<(), ModelError> {
        let mismatch = |expected: String, source: &str| {
            ModelError::DigestMismatch(Box::new(DigestMismatch {
                tag: e.tag.clone(),
                path: path.display().to_string(),
                expected,
                found: found.to_string(),
                source_of_truth: source.to_string(),
            }))
        };
        if let Some(pinned) = &e.sha256
            && !pinned.eq_ignore_ascii_case(found)
        {
            return Err(mismatch(pinned.clone(), "weights.toml"));
        }
        if let Some(l) = self.locked(&e.tag)?
            && !l.sha256.eq_ignore_ascii_case(found)
        {
            return Err(mismatch(l.sha256, &self.lock_path().display().to_string()));
        }
        Ok(())
    }

    /// The cached, digest-checked file of `tag`, for training: no network. Absent weights are an
    /// error that names the fetch command.
    pub fn resolve(&self, registry: &Registry, tag: &str) -> Result<PathBuf, ModelError> {
        let e = registry.get(tag)?;
        let path = self.cached(e).ok_or_else(|| ModelError::WeightsNotCached {
            tag: tag.to_string(),
            cache: self.cache.display().to_string(),
            command: e.fetch_command(),
        })?;
        let digest = sha256_file(&path)?;
        self.check_digest(e, &path, &digest)?;
        Ok(path)
    }
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let unreadable = |e: std::io::Error| ModelError::Unreadable {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut f = std::fs::File::open(path).map_err(unreadable)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(unreadable)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `path` is a whole, valid safetensors file whose every tensor name, shape and dtype
/// is what `e`'s architecture expects, and returns its digest.
pub fn verify(e: &WeightsEntry, path: &Path) -> Result<Verified, ModelError> {
    let unreadable = |reason: String| ModelError::Unreadable {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
    // The whole file must parse: a header longer than the file or a truncated body is refused.
    let st = crate::checkpoint::parse_safetensors(&bytes).map_err(unreadable)?;
    let tensors = st.len();
    drop(st);
    let config = e.model_config()?;
    let varmap = VarMap::new();
    let model = Model::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let problems = check(&model, &varmap, path, LoadOptions::default())?;
    if !problems.is_empty() {
        return Err(ModelError::Checkpoint {
            path: path.display().to_string(),
            arch: config.arch.to_string(),
            problems,
        });
    }
    let mut h = Sha256::new();
    h.update(&bytes);
    Ok(Verified {
        sha256: hex(&h.finalize()),
        bytes: bytes.len() as u64,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_builtin_registry_has_the_issue_tags_for_known_architectures() {
        let r = Registry::builtin().unwrap();
        for tag in [
            "densenet121.tv_in1k",
            "densenet169.tv_in1k",
            "densenet201.tv_in1k",
            "resnet18.tv_in1k",
            "resnet34.tv_in1k",
            "resnet50.tv_in1k",
            "inception_v3.tv_in1k",
        ] {
            let e = r.get(tag).unwrap();
            assert_eq!(e.repo, format!("timm/{tag}"));
            assert_eq!(e.file, "model.safetensors");
            // The tag is the architecture's own timm tag.
            let arch = Arch::from_name(&e.arch).unwrap();
            assert_eq!(arch.timm_tag().as_deref(), Some(tag));
        }
        let err = r.get("vit_base").unwrap_err().to_string();
        assert!(
            err.contains("vit_base") && err.contains("resnet50.tv_in1k"),
            "{err}"
        );
        assert!(
            Registry::parse("[[weights]]\ntag = \"x\"\nrepo = \"a/x\"\narch = \"lenet\"\n")
                .is_err()
        );
    }

    #[test]
    fn absent_weights_name_the_fetch_command_and_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(dir.path().join("hub"));
        let r = Registry::builtin().unwrap();
        let err = hub
            .resolve(&r, "densenet201.tv_in1k")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cargo xtask fetch-weights densenet201.tv_in1k") && err.contains("hub"),
            "{err}"
        );
        assert!(hub.locked("densenet201.tv_in1k").unwrap().is_none());
    }
}
