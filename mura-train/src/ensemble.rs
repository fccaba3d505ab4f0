//! Ensembles of trained runs, and [`Predictor`]: a run or an ensemble, whatever `evaluate` and
//! `predict` are pointed at.
//!
//! An ensemble is a directory holding `ensemble.toml` (the mode and the member run directories);
//! `evaluate` writes its predictions and `metrics.json` there as for a run. Modes:
//! - `mean`: the mean of the members' probabilities;
//! - `vote`: the share of members that call the image abnormal, each at its own chosen threshold
//!   (`threshold.json`, or 0.5 without one); abnormal when more than half do;
//! - `per-part`: each image goes to the member trained on its body part alone, or else to a member
//!   trained on every part (as in the seed reports' per-body-part models).
//!
//! The images an ensemble is scored on are those every member that predicts them holds in the same
//! role of its split, so no member is scored on an image it trained on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mura_data::{BodyPart, DecodedImage, ImageRecord, Manifest, Role};
use mura_metrics::{Criterion, Threshold};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::io::write_durable;
use crate::run::{Weights, check_run_dir, files, load_threshold};
use crate::trained::{TrainedRun, Tta};

/// How the members' predictions are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnsembleMode {
    Mean,
    Vote,
    PerPart,
}

impl EnsembleMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EnsembleMode::Mean => "mean",
            EnsembleMode::Vote => "vote",
            EnsembleMode::PerPart => "per-part",
        }
    }
}

/// What `ensemble.toml` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleDef {
    pub mode: EnsembleMode,
    /// Which checkpoint of each member.
    #[serde(default)]
    pub weights: Weights,
    /// Member run directories (absolute, or relative to the ensemble directory).
    pub members: Vec<PathBuf>,
}

impl EnsembleDef {
    /// Reads `dir/ensemble.toml` (without opening the members).
    pub fn load(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(files::ENSEMBLE);
        let text =
            std::fs::read_to_string(&path).map_err(|e| config_error(&path, e.to_string()))?;
        toml::from_str(&text).map_err(|e| config_error(&path, e.to_string()))
    }
}

/// An image to predict, with its body part when known (per-part ensembles route by it).
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub path: PathBuf,
    pub body_part: Option<BodyPart>,
}

impl Input {
    /// An image file; its body part read from its `XR_*` folder.
    pub fn file(path: PathBuf) -> Self {
        let body_part = BodyPart::in_path(&path);
        Self { path, body_part }
    }
}

/// An image of a split, with where to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub record: ImageRecord,
    pub input: Input,
}

/// The inputs of `items`, in their order.
pub fn inputs(items: &[Item]) -> Vec<Input> {
    items.iter().map(|i| i.input.clone()).collect()
}

/// Opened members and their routing.
pub struct Ensemble {
    pub dir: PathBuf,
    pub def: EnsembleDef,
    pub members: Vec<TrainedRun>,
    pub threshold: Option<Threshold>,
    /// Each member's `data.body_parts` (empty: every part), parsed once for routing.
    parts: Vec<Vec<BodyPart>>,
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ensemble")
            .field("dir", &self.dir)
            .field("def", &self.def)
            .finish_non_exhaustive()
    }
}

fn config_error(path: &Path, reason: String) -> TrainError {
    TrainError::Config {
        path: path.to_path_buf(),
        reason,
    }
}

impl Ensemble {
    /// Opens `dir/ensemble.toml` and its members.
    pub fn open(dir: &Path, device: Option<&str>) -> Result<Self, TrainError> {
        Self::from_def(dir, EnsembleDef::load(dir)?, device)
    }

    fn from_def(dir: &Path, def: EnsembleDef, device: Option<&str>) -> Result<Self, TrainError> {
        let path = dir.join(files::ENSEMBLE);
        if def.members.len() < 2 {
            return Err(config_error(
                &path,
                format!(
                    "an ensemble needs at least 2 runs, got {}",
                    def.members.len()
                ),
            ));
        }
        let mut members = Vec::new();
        for m in &def.members {
            let member_dir = if m.is_absolute() {
                m.clone()
            } else {
                dir.join(m)
            };
            if member_dir.join(files::ENSEMBLE).exists() {
                return Err(config_error(
                    &path,
                    format!("{} is an ensemble: members must be runs", m.display()),
                ));
            }
            members.push(TrainedRun::open(&member_dir, def.weights, device)?);
        }
        let e = Self {
            dir: dir.to_path_buf(),
            threshold: load_threshold(dir)?,
            parts: members.iter().map(|m| m.config.body_parts()).collect(),
            def,
            members,
        };
        if e.def.mode == EnsembleMode::PerPart {
            let general: Vec<&TrainedRun> = e
                .members
                .iter()
                .zip(&e.parts)
                .filter(|(_, parts)| parts.is_empty())
                .map(|(m, _)| m)
                .collect();
            if let [a, b, ..] = general.as_slice() {
                return Err(config_error(
                    &path,
                    format!(
                        "{} and {} are both trained on every body part: a per-part ensemble routes each part to one run",
                        a.dir.display(),
                        b.dir.display()
                    ),
                ));
            }
            let mut owner: BTreeMap<BodyPart, &Path> = BTreeMap::new();
            for (m, parts) in e.members.iter().zip(&e.parts) {
                for &part in parts {
                    if let Some(other) = owner.insert(part, &m.dir) {
                        return Err(config_error(
                            &path,
                            format!(
                                "{} and {} are both trained on {part}: a per-part ensemble needs one run per body part",
                                other.display(),
                                m.dir.display()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(e)
    }

    /// The member that predicts an image of `part`: in per-part mode the member trained on that
    /// part alone, else one trained on every part; `None` in the other modes (all predict).
    fn route(&self, part: Option<BodyPart>) -> Option<usize> {
        let part = part?;
        self.parts
            .iter()
            .position(|p| p.contains(&part))
            .or_else(|| self.parts.iter().position(Vec::is_empty))
    }

    /// The members responsible for an image of `part`.
    fn responsible(&self, part: Option<BodyPart>) -> Vec<usize> {
        match self.def.mode {
            EnsembleMode::PerPart => self.route(part).into_iter().collect(),
            _ => (0..self.members.len()).collect(),
        }
    }

    fn records(&self, role: Role) -> Result<Vec<Item>, TrainError> {
        // Every member's role of each image, by relative path.
        let mut roles: Vec<BTreeMap<String, Role>> = Vec::new();
        let mut candidates: BTreeMap<String, Item> = BTreeMap::new();
        for m in &self.members {
            let manifest = Manifest::load(&m.dir.join(files::SPLIT))?;
            let base = run_base(m)?;
            let mut of_member = BTreeMap::new();
            for e in &manifest.entries {
                of_member.insert(e.record.path.clone(), e.role);
                if e.role == role && !candidates.contains_key(&e.record.path) {
                    candidates.insert(
                        e.record.path.clone(),
                        Item {
                            input: Input {
                                path: e.record.file(&base),
                                body_part: Some(e.record.body_part),
                            },
                            record: e.record.clone(),
                        },
                    );
                }
            }
            roles.push(of_member);
        }
        let items: Vec<Item> = candidates
            .into_values()
            .filter(|item| {
                let who = self.responsible(item.input.body_part);
                !who.is_empty()
                    && who
                        .iter()
                        .all(|&m| roles[m].get(&item.record.path) == Some(&role))
            })
            .collect();
        if items.is_empty() {
            return Err(config_error(
                &self.dir.join(files::ENSEMBLE),
                format!(
                    "no {} image is in the {} set of every member that would predict it: were the members trained on the same data and split (same seed, or the same data.manifest)?",
                    role.as_str(),
                    role.as_str()
                ),
            ));
        }
        Ok(items)
    }

    fn predict(
        &self,
        inputs: &[Input],
        threads: usize,
        tta: Tta,
    ) -> Result<Probabilities, TrainError> {
        let paths: Vec<PathBuf> = inputs.iter().map(|i| i.path.clone()).collect();
        self.combine(inputs, &|m, idx| {
            let p: Vec<PathBuf> = idx.iter().map(|&i| paths[i].clone()).collect();
            m.predict_paths(&p, threads, tta)
        })
    }

    /// The members' probabilities of `inputs`, combined by the ensemble's mode; `raw_of(member,
    /// indices)` gives a member's raw probabilities of the inputs at `indices`.
    fn combine(&self, inputs: &[Input], raw_of: &RawOf<'_>) -> Result<Probabilities, TrainError> {
        let all: Vec<usize> = (0..inputs.len()).collect();
        let n = self.members.len() as f64;
        match self.def.mode {
            EnsembleMode::Mean => {
                let mut sum = Probabilities::zeros(inputs.len());
                for m in &self.members {
                    let raw = raw_of(m, &all)?;
                    sum.add(&raw, |p| m.calibrate(p));
                }
                Ok(sum.scaled(1.0 / n))
            }
            EnsembleMode::Vote => {
                // Each member calls at its own threshold, chosen on its calibrated
                // probabilities: the share of calls has no uncalibrated version.
                let mut votes = vec![0.0; inputs.len()];
                for m in &self.members {
                    let raw = raw_of(m, &all)?;
                    let t = m
                        .threshold
                        .map_or(mura_metrics::DEFAULT_THRESHOLD, |t| t.value);
                    for (v, p) in votes.iter_mut().zip(raw) {
                        *v += f64::from(u8::from(m.calibrate(p) > t));
                    }
                }
                let share: Vec<f64> = votes.into_iter().map(|v| v / n).collect();
                Ok(Probabilities {
                    raw: share.clone(),
                    calibrated: share,
                })
            }
            EnsembleMode::PerPart => self.predict_routed(inputs, raw_of),
        }
    }

    /// Each input through the member trained on its body part.
    fn predict_routed(
        &self,
        inputs: &[Input],
        raw_of: &RawOf<'_>,
    ) -> Result<Probabilities, TrainError> {
        let mut out = Probabilities {
            raw: vec![f64::NAN; inputs.len()],
            calibrated: vec![f64::NAN; inputs.len()],
        };
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, input) in inputs.iter().enumerate() {
            let m = self.route(input.body_part).ok_or_else(|| {
                config_error(
                    &input.path,
                    match input.body_part {
                        None => "no XR_* folder in its path tells its body part, which a per-part ensemble routes by".into(),
                        Some(p) => format!("no member of the ensemble is trained on {p} (nor on every part)"),
                    },
                )
            })?;
            groups.entry(m).or_default().push(i);
        }
        for (m, idx) in groups {
            let member = &self.members[m];
            for (&i, q) in idx.iter().zip(raw_of(member, &idx)?) {
                out.raw[i] = q;
                out.calibrated[i] = member.calibrate(q);
            }
        }
        Ok(out)
    }
}

/// A member's raw probabilities of the inputs at the given indices.
type RawOf<'a> = dyn Fn(&TrainedRun, &[usize]) -> Result<Vec<f64>, TrainError> + 'a;

/// The probabilities of a set of inputs as the models give them and calibrated (each run's
/// temperature applied before runs are combined).
#[derive(Debug, Clone, PartialEq)]
pub struct Probabilities {
    pub raw: Vec<f64>,
    pub calibrated: Vec<f64>,
}

impl Probabilities {
    fn zeros(n: usize) -> Self {
        Self {
            raw: vec![0.0; n],
            calibrated: vec![0.0; n],
        }
    }

    /// Adds one member's raw probabilities and their calibrated values.
    fn add(&mut self, raw: &[f64], calibrate: impl Fn(f64) -> f64) {
        for ((r, c), &p) in self.raw.iter_mut().zip(&mut self.calibrated).zip(raw) {
            *r += p;
            *c += calibrate(p);
        }
    }

    fn scaled(self, k: f64) -> Self {
        Self {
            raw: self.raw.into_iter().map(|v| v * k).collect(),
            calibrated: self.calibrated.into_iter().map(|v| v * k).collect(),
        }
    }
}

/// The folder a run's split paths are relative to.
fn run_base(run: &TrainedRun) -> Result<PathBuf, TrainError> {
    let root = run.config.data.root.clone().unwrap_or_default();
    Ok(mura_data::locate(&root)?.0)
}

/// Writes `out/ensemble.toml` for `members` and checks that it opens (members load, per-part
/// routing is unambiguous). An existing ensemble there is not replaced.
pub fn create_ensemble(
    members: &[PathBuf],
    mode: EnsembleMode,
    weights: Weights,
    out: &Path,
) -> Result<Ensemble, TrainError> {
    let path = out.join(files::ENSEMBLE);
    if path.exists() || out.join(files::CONFIG).exists() {
        return Err(TrainError::RunExists {
            path: out.to_path_buf(),
        });
    }
    let members: Vec<PathBuf> = members
        .iter()
        .map(|m| std::path::absolute(m).unwrap_or_else(|_| m.clone()))
        .collect();
    let def = EnsembleDef {
        mode,
        weights,
        members,
    };
    let ensemble = Ensemble::from_def(out, def, None)?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::Unwritable {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;
    let text = toml::to_string(&ensemble.def).map_err(|e| TrainError::Unwritable {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_durable(&path, text.as_bytes())?;
    Ok(ensemble)
}

/// A run or an ensemble: what `evaluate`, `predict` and `report` are given.
#[derive(Debug)]
pub enum Predictor {
    Run(Box<TrainedRun>),
    Ensemble(Ensemble),
}

impl Predictor {
    /// Opens `dir`: an ensemble when it holds `ensemble.toml`, else a run (`weights` then chooses
    /// its checkpoint; an ensemble's members use the checkpoint its definition names).
    pub fn open(dir: &Path, weights: Weights, device: Option<&str>) -> Result<Self, TrainError> {
        check_run_dir(dir)?;
        if dir.join(files::ENSEMBLE).exists() {
            Ok(Predictor::Ensemble(Ensemble::open(dir, device)?))
        } else {
            Ok(Predictor::Run(Box::new(TrainedRun::open(
                dir, weights, device,
            )?)))
        }
    }

    /// Reads DICOM frames through `voi` instead of each run's `data.voi`.
    pub fn set_voi(&mut self, voi: mura_data::Voi) {
        match self {
            Predictor::Run(r) => r.config.data.voi = voi,
            Predictor::Ensemble(e) => e.members.iter_mut().for_each(|m| m.config.data.voi = voi),
        }
    }

    pub fn dir(&self) -> &Path {
        match self {
            Predictor::Run(r) => &r.dir,
            Predictor::Ensemble(e) => &e.dir,
        }
    }

    /// The seed of bootstrap resampling: the run's (the first member's for an ensemble).
    pub fn seed(&self) -> u64 {
        match self {
            Predictor::Run(r) => r.config.seed,
            Predictor::Ensemble(e) => e.members.first().map_or(0, |m| m.config.seed),
        }
    }

    /// The checkpoint choice, resolved to `best` or `last`.
    pub fn weights(&self) -> Weights {
        match self {
            Predictor::Run(r) => r.weights,
            Predictor::Ensemble(e) => e.def.weights,
        }
    }

    pub fn threshold(&self) -> Option<Threshold> {
        match self {
            Predictor::Run(r) => r.threshold,
            Predictor::Ensemble(e) => e.threshold,
        }
    }

    /// How a missing threshold is chosen: the run's `train.threshold`, kappa for ensembles.
    pub fn criterion(&self) -> Criterion {
        match self {
            Predictor::Run(r) => r.config.train.threshold,
            Predictor::Ensemble(_) => Criterion::Kappa,
        }
    }

    /// The images of `role` to score, with their files.
    pub fn records(&self, role: Role) -> Result<Vec<Item>, TrainError> {
        match self {
            Predictor::Run(r) => {
                let split = r.dir.join(files::SPLIT);
                let manifest = Manifest::load(&split)?;
                let base = run_base(r)?;
                let items: Vec<Item> = manifest
                    .role(role)
                    .map(|rec| Item {
                        input: Input {
                            path: rec.file(&base),
                            body_part: Some(rec.body_part),
                        },
                        record: rec.clone(),
                    })
                    .collect();
                if items.is_empty() {
                    return Err(config_error(
                        &split,
                        format!("no {} images in the run's split", role.as_str()),
                    ));
                }
                Ok(items)
            }
            Predictor::Ensemble(e) => e.records(role),
        }
    }

    /// Calibrated probabilities of `inputs`, in their order.
    pub fn predict(
        &self,
        inputs: &[Input],
        threads: usize,
        tta: Tta,
    ) -> Result<Vec<f64>, TrainError> {
        Ok(self.predict_both(inputs, threads, tta)?.calibrated)
    }

    /// Probabilities of `inputs` as the models give them and calibrated, from one pass.
    pub fn predict_both(
        &self,
        inputs: &[Input],
        threads: usize,
        tta: Tta,
    ) -> Result<Probabilities, TrainError> {
        match self {
            Predictor::Run(r) => {
                let paths: Vec<PathBuf> = inputs.iter().map(|i| i.path.clone()).collect();
                let raw = r.predict_paths(&paths, threads, tta)?;
                let calibrated = raw.iter().map(|&p| r.calibrate(p)).collect();
                Ok(Probabilities { raw, calibrated })
            }
            Predictor::Ensemble(e) => e.predict(inputs, threads, tta),
        }
    }

    /// Calibrated (and raw) probabilities of decoded images, as from files; `part` is their body
    /// part, which a per-part ensemble routes by.
    pub fn predict_images(
        &self,
        images: &[DecodedImage],
        part: Option<BodyPart>,
    ) -> Result<Probabilities, TrainError> {
        match self {
            Predictor::Run(r) => {
                let raw = r.predict_images(&images.iter().collect::<Vec<_>>())?;
                let calibrated = raw.iter().map(|&p| r.calibrate(p)).collect();
                Ok(Probabilities { raw, calibrated })
            }
            Predictor::Ensemble(e) => {
                let inputs: Vec<Input> = (0..images.len())
                    .map(|i| Input {
                        path: PathBuf::from(format!("image {}", i + 1)),
                        body_part: part,
                    })
                    .collect();
                e.combine(&inputs, &|m, idx| {
                    m.predict_images(&idx.iter().map(|&i| &images[i]).collect::<Vec<_>>())
                })
            }
        }
    }

    /// The run whose Grad-CAM stands for this predictor's on an image of `part`: the run itself,
    /// or the ensemble's member that would score it (its first for mean and vote).
    pub fn explaining_run(&self, part: Option<BodyPart>) -> Option<&TrainedRun> {
        match self {
            Predictor::Run(r) => Some(r),
            Predictor::Ensemble(e) => e.responsible(part).first().map(|&m| &e.members[m]),
        }
    }

    /// The member runs (the run itself for a run).
    pub fn runs(&self) -> Vec<&TrainedRun> {
        match self {
            Predictor::Run(r) => vec![r],
            Predictor::Ensemble(e) => e.members.iter().collect(),
        }
    }
}
