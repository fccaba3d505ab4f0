//! `mura sweep`: a grid (or list) of config overrides over one base config, expanded into named
//! runs, run one per array task (or all in turn) and ranked by a validation metric.
//!
//! A sweep file:
//!
//! ```toml
//! base = "run.toml"         # relative to this file
//! out = "runs/lr-sweep"     # where the runs go (relative to this file too)
//! metric = "study_kappa"    # what --collect ranks by (see CV_METRICS); study_auc by default
//! [grid]                    # every combination, keys in sorted order, the last varying fastest
//! "model.arch" = ["densenet121", "resnet50"]
//! "train.optimizer.lr" = [1e-3, 1e-4]
//! [[runs]]                  # and/or points of their own, after the grid's
//! "train.optimizer.lr" = 3e-4
//! ```
//!
//! Point `i` is the run `<out>/<ii>-<key=value>...`: an ordinary run directory (it locks and
//! resumes), scored on its validation studies into `point.json` once it has finished.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::config::RunConfig;
use crate::cv::jobs::{ArrayJob, Scheduler, emit};
use crate::cv::{CV_METRICS, fold_metrics, train_and_validate};
use crate::fit::FitOptions;
use crate::io::{read_json, write_durable, write_json};
use crate::observer::Observer;
use crate::run::{files, init_run_dir};

/// A finished point's result, in its run directory.
const POINT_RESULT: &str = "point.json";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    base: PathBuf,
    out: PathBuf,
    #[serde(default = "default_metric")]
    metric: String,
    #[serde(default)]
    grid: toml::Table,
    #[serde(default)]
    runs: Vec<toml::Table>,
}

fn default_metric() -> String {
    "study_auc".into()
}

/// One run of a sweep.
#[derive(Debug, Clone)]
pub struct Point {
    /// 0-based, as array tasks count.
    pub index: usize,
    pub name: String,
    /// The overrides of the base config (dotted key, value as TOML).
    pub overrides: Vec<(String, String)>,
    pub config: RunConfig,
}

/// A sweep file expanded.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub path: PathBuf,
    pub out: PathBuf,
    pub metric: String,
    pub points: Vec<Point>,
}

/// A finished point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    pub index: usize,
    pub name: String,
    pub run: PathBuf,
    pub overrides: Vec<(String, String)>,
    pub metrics: BTreeMap<String, f64>,
}

/// The finished points best first, and the others named.
#[derive(Debug, Clone, Serialize)]
pub struct Ranking {
    pub out: PathBuf,
    pub metric: String,
    pub ranked: Vec<PointResult>,
    /// Points with no run directory yet.
    pub missing: Vec<usize>,
    /// Points whose run started but left no result (running, failed or cancelled).
    pub unfinished: Vec<usize>,
}

fn config_error(path: &Path, reason: String) -> TrainError {
    TrainError::Config {
        path: path.to_path_buf(),
        reason,
    }
}

/// Sets the dotted `key` of `table` (creating the tables on its way) to `value`.
fn set(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let Some((last, head)) = parts.split_last() else {
        return Err("an empty key".into());
    };
    let mut t = table;
    for p in head {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{key}`: `{p}` is a value, not a table"))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The run name of point `index` with `overrides`: `07-arch=resnet50_lr=0.0001`.
fn point_name(index: usize, overrides: &[(String, toml::Value)]) -> String {
    let parts: Vec<String> = overrides
        .iter()
        .map(|(k, v)| {
            let short = k.rsplit('.').next().unwrap_or(k);
            format!("{short}={}", show(v))
        })
        .collect();
    let name = format!("{index:02}-{}", parts.join("_"));
    name.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '=' | '_' | '-' | '+' => c,
            _ => '-',
        })
        .collect()
}

/// Every combination of the grid's values, keys in order, the last varying fastest.
fn grid_points(
    grid: &toml::Table,
    path: &Path,
) -> Result<Vec<Vec<(String, toml::Value)>>, TrainError> {
    let mut points = vec![vec![]];
    for (key, values) in grid {
        let values = match values {
            toml::Value::Array(v) if !v.is_empty() => v,
            _ => {
                return Err(config_error(
                    path,
                    format!("grid.\"{key}\" must be a non-empty list of values"),
                ));
            }
        };
        points = points
            .into_iter()
            .flat_map(|p: Vec<(String, toml::Value)>| {
                values.iter().map(move |v| {
                    let mut p = p.clone();
                    p.push((key.clone(), v.clone()));
                    p
                })
            })
            .collect();
    }
    Ok(points)
}

impl Sweep {
    /// Reads and expands a sweep file; every point's config is checked (an error names the
    /// point and its overrides).
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| config_error(path, e.to_string()))?;
        let file: SweepFile =
            toml::from_str(&text).map_err(|e| config_error(path, e.message().to_string()))?;
        if !CV_METRICS.contains(&file.metric.as_str()) {
            return Err(config_error(
                path,
                format!(
                    "unknown metric `{}` (known: {})",
                    file.metric,
                    CV_METRICS.join(", ")
                ),
            ));
        }
        let here = path.parent().unwrap_or(Path::new(""));
        let base_path = here.join(&file.base);
        let base_text = std::fs::read_to_string(&base_path)
            .map_err(|e| config_error(&base_path, e.to_string()))?;
        let base: toml::Table = toml::from_str(&base_text)
            .map_err(|e| config_error(&base_path, e.message().to_string()))?;
        let mut sets = if file.grid.is_empty() {
            vec![]
        } else {
            grid_points(&file.grid, path)?
        };
        sets.extend(
            file.runs
                .iter()
                .map(|r| r.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        );
        if sets.is_empty() {
            return Err(config_error(
                path,
                "no point: give a [grid] or [[runs]]".into(),
            ));
        }
        let mut points = Vec::with_capacity(sets.len());
        for (index, overrides) in sets.into_iter().enumerate() {
            let name = point_name(index, &overrides);
            let mut table = base.clone();
            for (k, v) in &overrides {
                set(&mut table, k, v.clone())
                    .map_err(|e| config_error(path, format!("point {index} ({name}): {e}")))?;
            }
            table.insert("name".into(), toml::Value::String(name.clone()));
            let text = toml::to_string(&table).map_err(|e| config_error(path, e.to_string()))?;
            let config = RunConfig::parse(&text)
                .map_err(|e| config_error(path, format!("point {index} ({name}): {e}")))?;
            points.push(Point {
                index,
                name,
                overrides: overrides
                    .iter()
                    .map(|(k, v)| (k.clone(), show(v)))
                    .collect(),
                config,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            out: here.join(&file.out),
            metric: file.metric,
            points,
        })
    }

    fn point(&self, index: usize) -> Result<&Point, TrainError> {
        self.points.get(index).ok_or_else(|| {
            config_error(
                &self.path,
                format!(
                    "point {index} does not exist: the points are 0 to {}",
                    self.points.len() - 1
                ),
            )
        })
    }

    /// Trains point `index` (resuming its run when it has a checkpoint) and scores it on its
    /// validation studies. `None` when interrupted.
    pub fn run_point(
        &self,
        index: usize,
        options: &FitOptions,
        observer: &mut dyn Observer,
    ) -> Result<Option<PointResult>, TrainError> {
        let point = self.point(index)?;
        point.config.check()?;
        let run = self.out.join(&point.name);
        observer.message(&format!(
            "point {index} of {}: {}",
            self.points.len(),
            run.display()
        ));
        if !run.join(files::CONFIG).exists() {
            init_run_dir(&point.config, &run)?;
        }
        let Some(ev) = train_and_validate(&run, options, observer)? else {
            return Ok(None);
        };
        let result = PointResult {
            index,
            name: point.name.clone(),
            run: run.clone(),
            overrides: point.overrides.clone(),
            metrics: fold_metrics(&ev),
        };
        write_json(&run.join(POINT_RESULT), &result)?;
        Ok(Some(result))
    }

    /// Ranks the finished points by the sweep's metric (best first) into `sweep.csv` and
    /// `sweep.json` under `out`, naming the points missing or unfinished.
    pub fn collect(&self) -> Result<Ranking, TrainError> {
        let (mut ranked, mut missing, mut unfinished) = (Vec::new(), Vec::new(), Vec::new());
        for p in &self.points {
            let run = self.out.join(&p.name);
            match read_json::<PointResult>(&run.join(POINT_RESULT))? {
                Some(r) => ranked.push(r),
                None if run.is_dir() => unfinished.push(p.index),
                None => missing.push(p.index),
            }
        }
        let key = |r: &PointResult| {
            r.metrics
                .get(&self.metric)
                .copied()
                .unwrap_or(f64::NEG_INFINITY)
        };
        ranked.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.index.cmp(&b.index)));
        let ranking = Ranking {
            out: self.out.clone(),
            metric: self.metric.clone(),
            ranked,
            missing,
            unfinished,
        };
        std::fs::create_dir_all(&self.out).map_err(|e| TrainError::Unwritable {
            path: self.out.clone(),
            reason: e.to_string(),
        })?;
        write_json(&self.out.join("sweep.json"), &ranking)?;
        let mut csv = format!("rank,index,name,{}\n", CV_METRICS.join(","));
        for (i, r) in ranking.ranked.iter().enumerate() {
            let cells: Vec<String> = CV_METRICS
                .iter()
                .map(|k| {
                    r.metrics
                        .get(*k)
                        .map(|v| format!("{v:.6}"))
                        .unwrap_or_default()
                })
                .collect();
            csv.push_str(&format!(
                "{},{},{},{}\n",
                i + 1,
                r.index,
                r.name,
                cells.join(",")
            ));
        }
        write_durable(&self.out.join("sweep.csv"), csv.as_bytes())?;
        Ok(ranking)
    }

    /// The job array of [`Sweep::array_job`] written for `scheduler`, after creating the folder
    /// its logs go to.
    pub fn emit_array(
        &self,
        scheduler: Scheduler,
        program: &Path,
        image: &str,
    ) -> Result<String, TrainError> {
        let job = self.array_job(program);
        std::fs::create_dir_all(&job.logs).map_err(|e| TrainError::Unwritable {
            path: job.logs.clone(),
            reason: e.to_string(),
        })?;
        Ok(emit(scheduler, &job, image))
    }

    /// The job array that runs every point, by the `mura` at `program`.
    pub fn array_job(&self, program: &Path) -> ArrayJob {
        let abs = |p: &Path| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        let base = vec![abs(program), "sweep".into(), abs(&self.path)];
        let mut command = base.clone();
        command.extend(["--index".into(), "--quiet".into()]);
        let mut collect = base;
        collect.push("--collect".into());
        let first = &self.points[0].config;
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        ArrayJob {
            name: format!("mura-sweep-{stem}"),
            task: "one run each (task i runs point i)".into(),
            tasks: self.points.len(),
            command,
            collect,
            cpus: first.data.threads.max(1),
            gpus: usize::from(first.device.starts_with("cuda")),
            logs: PathBuf::from(abs(&self.out)),
        }
    }
}

#[cfg(test)]
mod tests;
