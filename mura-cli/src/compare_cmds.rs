//! `mura explain`, `mura report`, `mura ensemble`, `mura cv` and `mura threshold`: argument structs
//! and the library calls.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use mura_train::cv::{CV_METRICS, cross_validate};
use mura_train::ensemble::{EnsembleMode, Predictor, create_ensemble};
use mura_train::evaluate::{TrainedRun, Weights, choose_threshold};
use mura_train::explain::explain;
use mura_train::report::{ReportOptions, SORT_KEYS, report};
use mura_train::{FitOptions, RunConfig};

use crate::train_cmds::{CriterionArg, OutputArgs, Progress, WeightsArg, interrupt_flag};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A run directory.
    pub run: PathBuf,
    /// Images to explain.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Folder for the PNGs (one per image: `<image name>.gradcam.png`).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = WeightsArg::Final)]
    pub weights: WeightsArg,
    #[arg(long)]
    pub json: bool,
}

pub fn cmd_explain(a: &ExplainArgs) -> Result<()> {
    let run = TrainedRun::open(&a.run, a.weights.into(), None)?;
    std::fs::create_dir_all(&a.out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", a.out.display()))?;
    let mut results = Vec::new();
    for (i, image) in a.images.iter().enumerate() {
        if !image.is_file() {
            bail!("{}: no such image file", image.display());
        }
        let stem = image
            .file_stem()
            .map_or_else(|| format!("image{i}"), |s| s.to_string_lossy().into_owned());
        // Images of different studies are often all called image1.png: number them.
        let name = if a.images.len() > 1 {
            format!("{:03}-{stem}.gradcam.png", i + 1)
        } else {
            format!("{stem}.gradcam.png")
        };
        let e = explain(&run, image, &a.out.join(name))?;
        if !a.json {
            println!(
                "{:.4}  {}  → {}",
                e.probability,
                image.display(),
                e.out.display()
            );
        }
        results.push(e);
    }
    if a.json {
        println!("{}", serde_json::to_string(&results)?);
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run and ensemble directories to compare (evaluated on their test split first when they
    /// have not been).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Folder for index.html and its PNGs.
    #[arg(long)]
    pub out: PathBuf,
    /// The comparison table's order, best first: study_auc, study_kappa, kappa_at_threshold,
    /// study_accuracy, study_f1, study_sensitivity, study_specificity, image_auc.
    #[arg(long, default_value = "study_auc")]
    pub sort_by: String,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

pub fn cmd_report(a: &ReportArgs) -> Result<()> {
    if !SORT_KEYS.contains(&a.sort_by.as_str()) {
        bail!(
            "--sort-by {}: not a column (one of: {})",
            a.sort_by,
            SORT_KEYS.join(", ")
        );
    }
    let s = report(
        &a.runs,
        &a.out,
        &ReportOptions {
            sort_by: a.sort_by.clone(),
            threads: a.threads,
        },
    )?;
    for (i, e) in s.entries.iter().enumerate() {
        println!(
            "{}. {}  {}  study AUC {}  kappa {}",
            i + 1,
            e.name,
            e.model,
            e.studies.auc.map_or("n/a".into(), |v| format!("{v:.3}")),
            e.studies.kappa.map_or("n/a".into(), |v| format!("{v:.3}"))
        );
    }
    println!("wrote {}", s.html.display());
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Mean of the members' probabilities.
    Mean,
    /// Share of members calling the image abnormal (each at its own chosen threshold).
    Vote,
    /// Each image to the member trained on its body part (or one trained on all parts).
    PerPart,
}

#[derive(Debug, Args)]
pub struct EnsembleArgs {
    /// Member run directories (at least two).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = ModeArg::Mean)]
    pub mode: ModeArg,
    /// The ensemble's directory: ensemble.toml is written there, and `evaluate`/`predict`
    /// accept it like a run directory.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = WeightsArg::Final)]
    pub weights: WeightsArg,
}

pub fn cmd_ensemble(a: &EnsembleArgs) -> Result<()> {
    let mode = match a.mode {
        ModeArg::Mean => EnsembleMode::Mean,
        ModeArg::Vote => EnsembleMode::Vote,
        ModeArg::PerPart => EnsembleMode::PerPart,
    };
    let e = create_ensemble(&a.runs, mode, a.weights.into(), &a.out)?;
    println!(
        "wrote {}/ensemble.toml: {} of {} runs; score it with `mura evaluate {}`",
        a.out.display(),
        mode.as_str(),
        e.members.len(),
        a.out.display()
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct CvArgs {
    /// The run configuration each fold trains with.
    #[arg(long)]
    pub config: PathBuf,
    /// Number of folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Folder that receives `<name>-cv<K>/` with one run per fold.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn cmd_cv(a: &CvArgs) -> Result<()> {
    let config = RunConfig::load(&a.config)?;
    let mut progress = Progress::new(a.output);
    let options = FitOptions {
        stop: Some(interrupt_flag()),
        stop_after_steps: None,
    };
    let cv = cross_validate(&config, a.folds, &a.out, &options, &mut progress)?;
    if a.output.json {
        println!("{}", serde_json::to_string(&cv)?);
    } else if !a.output.quiet {
        println!(
            "{}-fold cross-validation, validation studies of each fold ({})",
            a.folds,
            cv.dir.display()
        );
        println!("{:<18} mean ± std (folds)", "metric");
        for k in CV_METRICS {
            if let Some(m) = cv.summary.get(k) {
                println!("{k:<18} {:.4} ± {:.4} ({})", m.mean, m.std, m.folds);
            }
        }
        println!("wrote {0}/cv.csv and {0}/cv.json", cv.dir.display());
    }
    if cv.interrupted {
        bail!(
            "interrupted after {} of {} folds; run the same command again to continue",
            cv.folds.len(),
            a.folds
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ThresholdArgs {
    /// A run or ensemble directory.
    pub run: PathBuf,
    #[arg(long, value_enum, default_value_t = CriterionArg::Kappa)]
    pub criterion: CriterionArg,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

pub fn cmd_threshold(a: &ThresholdArgs) -> Result<()> {
    let predictor = Predictor::open(&a.run, Weights::Final, None)?;
    match choose_threshold(&predictor, a.criterion.into(), a.threads)? {
        Some(t) => println!(
            "threshold {:.4}: maximum {} on the validation studies, {:.4}; stored in {}/threshold.json",
            t.value,
            t.criterion.as_str(),
            t.score,
            a.run.display()
        ),
        None => bail!(
            "{}: the validation studies admit no threshold (one class, or one distinct probability)",
            a.run.display()
        ),
    }
    Ok(())
}
