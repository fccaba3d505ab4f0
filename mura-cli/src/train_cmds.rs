//! `mura train`, `mura evaluate`, `mura predict` and the training half of `mura demo`: argument
//! structs, a progress observer, and the library calls.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mura_data::Role;
use mura_models::{Arch, ModelConfig};
use mura_train::ensemble::{Input, Predictor};
use mura_train::evaluate::{EvaluateOptions, Evaluation, Level, Tta, Weights};
use mura_train::fit::files;
use mura_train::{
    EpochProgress, FitEnd, FitOptions, FitSummary, HistoryRow, Observer, RunConfig, create_run_dir,
    fit,
};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A TOML run configuration (see `configs/`); the flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the interrupted run in this directory (its config.toml and last.safetensors).
    #[arg(long, conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// MURA root (the folder holding MURA-v1.1/).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A saved split manifest (split.csv); its paths are relative to --data.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Architecture (custom-cnn, densenet169, resnet50, inception_v3, ...).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub image_size: Option<usize>,
    #[arg(long)]
    pub epochs: Option<u32>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate of the optimiser.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Folder that holds run directories.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// The run's name (its folder under --out).
    #[arg(long)]
    pub name: Option<String>,
    /// Weights to start from: a .safetensors file with timm names, or a tag fetched with
    /// `cargo xtask fetch-weights` (`densenet169.tv_in1k`), read from the local hub cache.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// `cpu` or `cuda:N` (needs a build with `--features cuda`).
    #[arg(long)]
    pub device: Option<String>,
    /// Also write the per-epoch scalars as TensorBoard event files under RUN/tensorboard/.
    #[arg(long)]
    pub tensorboard: bool,
    /// How the decision threshold is chosen on the validation studies at the end.
    #[arg(long, value_enum)]
    pub threshold: Option<CriterionArg>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CriterionArg {
    /// Maximum Cohen's kappa.
    Kappa,
    /// Maximum Youden's J (sensitivity + specificity - 1).
    Youden,
}

impl From<CriterionArg> for mura_metrics::Criterion {
    fn from(c: CriterionArg) -> Self {
        match c {
            CriterionArg::Kappa => mura_metrics::Criterion::Kappa,
            CriterionArg::Youden => mura_metrics::Criterion::Youden,
        }
    }
}

/// `--tta`: test-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TtaArg {
    None,
    /// The image and its mirror image.
    Hflip,
    /// The image, and rotated by -10° and +10°.
    Rot,
    /// Both: six views.
    #[value(name = "hflip+rot")]
    HflipRot,
}

impl From<TtaArg> for Tta {
    fn from(t: TtaArg) -> Self {
        match t {
            TtaArg::None => Tta::None,
            TtaArg::Hflip => Tta::Hflip,
            TtaArg::Rot => Tta::Rot,
            TtaArg::HflipRot => Tta::HflipRot,
        }
    }
}

#[derive(Debug, Args, Clone, Copy)]
pub struct OutputArgs {
    /// No progress bars or epoch lines; errors only.
    #[arg(long)]
    pub quiet: bool,
    /// Machine-readable output on stdout: one JSON object per epoch, then the result.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    Test,
    Val,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WeightsArg {
    /// What the run ended with: best, or last when early stopping does not restore the best.
    Final,
    Best,
    Last,
}

impl From<WeightsArg> for Weights {
    fn from(w: WeightsArg) -> Self {
        match w {
            WeightsArg::Final => Weights::Final,
            WeightsArg::Best => Weights::Best,
            WeightsArg::Last => Weights::Last,
        }
    }
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// A run directory, or an ensemble directory (`mura ensemble`).
    pub run: PathBuf,
    /// Which part of the run's split to score: test (the official valid set) or val.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    pub split: SplitArg,
    #[arg(long, value_enum, default_value_t = WeightsArg::Final)]
    pub weights: WeightsArg,
    /// Bootstrap resamples for the 95% intervals (0: none).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Test-time augmentation: average the probabilities of these views of each image.
    #[arg(long, value_enum, default_value_t = TtaArg::None)]
    pub tta: TtaArg,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A run directory, or an ensemble directory (`mura ensemble`).
    pub run: PathBuf,
    /// Images, or study folders (every image inside is predicted and averaged into the study).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = WeightsArg::Final)]
    pub weights: WeightsArg,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Test-time augmentation: average the probabilities of these views of each image.
    #[arg(long, value_enum, default_value_t = TtaArg::None)]
    pub tta: TtaArg,
    #[arg(long)]
    pub json: bool,
}

/// Progress bars on stderr, epoch lines, and JSON lines for scripts.
pub struct Progress {
    bar: Option<ProgressBar>,
    output: OutputArgs,
}

impl Progress {
    pub fn new(output: OutputArgs) -> Self {
        Self { bar: None, output }
    }

    fn line(&self, text: &str) {
        if self.output.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(text),
            None if self.output.json => eprintln!("{text}"),
            None => println!("{text}"),
        }
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("  —  ".into(), |x| format!("{x:.3}"))
}

impl Observer for Progress {
    fn message(&mut self, text: &str) {
        self.line(text);
    }

    fn epoch_start(&mut self, epoch: u32, epochs: u32, images: usize, done: usize) {
        if self.output.quiet {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(images as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:28}] {pos}/{len} {per_sec:>10} eta {eta:>4} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {epoch}/{epochs}"));
        bar.set_position(done as u64);
        bar.reset_eta();
        self.bar = Some(bar);
    }

    fn batch(&mut self, p: &EpochProgress) {
        if let Some(b) = &self.bar {
            b.set_position(p.images as u64);
            b.set_message(format!("loss {:.4}", p.loss_sum / p.images.max(1) as f64));
        }
    }

    fn eval_start(&mut self, images: usize) {
        if let Some(b) = &self.bar {
            b.set_message(format!("validating {images} images"));
        }
    }

    fn epoch_end(&mut self, r: &HistoryRow, improved: bool) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if self.output.json
            && let Ok(j) = serde_json::to_string(r)
        {
            println!("{j}");
        }
        self.line(&format!(
            "epoch {:>3}  loss {:.4}/{:.4}  auc {}/{}  acc {}/{}  kappa {}/{}  lr {:.1e}  {:.0}s  {:.1} img/s{}",
            r.epoch,
            r.train_loss,
            r.val_loss,
            fmt_opt(r.train_auc),
            fmt_opt(r.val_auc),
            fmt_opt(r.train_accuracy),
            fmt_opt(r.val_accuracy),
            fmt_opt(r.train_kappa),
            fmt_opt(r.val_kappa),
            r.lr,
            r.seconds,
            r.images_per_sec,
            if improved { "  *best" } else { "" }
        ));
    }
}

/// A Ctrl-C handler that asks the run to stop at the next batch boundary; a second Ctrl-C exits.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&flag);
    // Another handler may already be installed (tests running several commands in one process).
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\nstopping at the next batch boundary; the last state will be saved");
    });
    flag
}

/// The run configuration: the file (or defaults) with the flags applied.
pub fn train_config(a: &TrainArgs) -> Result<RunConfig> {
    let mut c = match &a.config {
        Some(path) => RunConfig::load(path)?,
        None => {
            let arch = a.model.as_deref().unwrap_or("custom-cnn");
            RunConfig {
                name: None,
                seed: 0,
                device: "cpu".into(),
                data: mura_train::DataConfig::new(None),
                model: ModelConfig::new(parse_arch(arch)?),
                pretrained: None,
                train: mura_train::TrainConfig::default(),
            }
        }
    };
    if let Some(d) = &a.data {
        c.data.root = Some(d.clone());
    }
    if let Some(m) = &a.manifest {
        c.data.manifest = Some(m.clone());
    }
    if let Some(m) = &a.model {
        let arch = parse_arch(m)?;
        if arch != c.model.arch {
            c.model = ModelConfig {
                input_size: c.model.input_size,
                ..ModelConfig::new(arch)
            };
        }
    }
    if let Some(s) = a.image_size {
        c.model.input_size = Some(s);
    }
    if let Some(e) = a.epochs {
        c.train.epochs = e;
    }
    if let Some(b) = a.batch_size {
        c.train.batch_size = b;
    }
    if let Some(lr) = a.lr {
        c.train.optimizer.set_lr(lr);
    }
    if let Some(s) = a.seed {
        c.seed = s;
    }
    if let Some(n) = &a.name {
        c.name = Some(n.clone());
    }
    if let Some(p) = &a.pretrained {
        c.pretrained = Some(mura_train::PretrainedConfig {
            weights: p.clone(),
            skip_classifier: true,
            fold_first_conv: true,
        });
    }
    if let Some(d) = &a.device {
        c.device = d.clone();
    }
    if a.tensorboard {
        c.train.tensorboard = true;
    }
    if let Some(t) = a.threshold {
        c.train.threshold = t.into();
    }
    c.check()?;
    Ok(c)
}

fn parse_arch(name: &str) -> Result<Arch> {
    Ok(Arch::from_name(name)?)
}

pub fn cmd_train(a: &TrainArgs) -> Result<()> {
    let (config, dir) = match &a.resume {
        Some(dir) => {
            let path = dir.join(files::CONFIG);
            let config = RunConfig::load(&path)?;
            if !dir.join(files::LAST).exists() {
                bail!("{}: no last.safetensors to resume from", dir.display());
            }
            (config, dir.clone())
        }
        None => {
            let config = train_config(a)?;
            let dir = create_run_dir(&config, &a.out)?;
            (config, dir)
        }
    };
    let summary = run_fit(&config, &dir, a.output)?;
    report_fit(&summary, a.output)
}

/// Runs `fit` with progress output and the Ctrl-C handler.
pub fn run_fit(config: &RunConfig, dir: &Path, output: OutputArgs) -> Result<FitSummary> {
    let mut progress = Progress::new(output);
    progress.message(&format!("run directory {}", dir.display()));
    let options = FitOptions {
        stop: Some(interrupt_flag()),
        stop_after_steps: None,
    };
    Ok(fit(config, dir, &options, &mut progress)?)
}

fn report_fit(s: &FitSummary, output: OutputArgs) -> Result<()> {
    if output.json {
        println!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    if output.quiet {
        return Ok(());
    }
    match &s.end {
        FitEnd::Finished(reason) => println!(
            "finished: {reason}; {} epochs in {:.0}s{}",
            s.epochs_done,
            s.seconds,
            s.best
                .map(|(v, e)| format!("; best {:?} {v:.4} at epoch {e}", s.monitor))
                .unwrap_or_default()
        ),
        FitEnd::Interrupted { epoch, step } => println!(
            "interrupted in epoch {epoch} after step {step}; continue with `mura train --resume {}`",
            s.run_dir.display()
        ),
    }
    Ok(())
}

pub fn cmd_evaluate(a: &EvaluateArgs) -> Result<()> {
    let options = EvaluateOptions {
        role: match a.split {
            SplitArg::Test => Role::Test,
            SplitArg::Val => Role::Val,
        },
        weights: a.weights.into(),
        resamples: a.bootstrap,
        threads: a.threads,
        tta: a.tta.into(),
    };
    let ev = mura_train::evaluate(&a.run, options)?;
    if a.output.json {
        println!("{}", serde_json::to_string(&ev)?);
    } else if !a.output.quiet {
        print!("{}", evaluation_table(&ev));
        println!(
            "wrote {0}/predictions.csv, {0}/study_predictions.csv and {0}/metrics.json",
            a.run.display()
        );
    }
    Ok(())
}

fn ci(scored: &mura_train::evaluate::Scored, name: &str) -> String {
    scored
        .intervals
        .get(name)
        .map(|i| format!(" [{:.3}, {:.3}]", i.lower, i.upper))
        .unwrap_or_default()
}

fn level_table(title: &str, level: &Level) -> String {
    let mut out = format!(
        "{title}\n{:<10} {:>6} {:>5} {:>22} {:>22} {:>7} {:>7} {:>7} {:>7}  confusion tn/fp/fn/tp\n",
        "part", "n", "pos", "AUC [95% CI]", "kappa [95% CI]", "acc", "prec", "recall", "F1"
    );
    let rows = std::iter::once(("all".to_string(), &level.overall))
        .chain(level.body_parts.iter().map(|(k, v)| (k.clone(), v)));
    for (name, s) in rows {
        let r = &s.report;
        let c = &r.confusion;
        out.push_str(&format!(
            "{:<10} {:>6} {:>5} {:>22} {:>22} {:>7} {:>7} {:>7} {:>7}  {}/{}/{}/{}\n",
            name,
            r.n,
            r.positives,
            format!("{}{}", fmt_opt(r.auc), ci(s, "auc")),
            format!("{}{}", fmt_opt(r.kappa), ci(s, "kappa")),
            fmt_opt(r.accuracy),
            fmt_opt(r.precision),
            fmt_opt(r.recall),
            fmt_opt(r.f1),
            c.true_negative,
            c.false_positive,
            c.false_negative,
            c.true_positive
        ));
    }
    out
}

/// The evaluation as two tables: study level (the MURA paper's unit) and image level, then the
/// study-level figures at the threshold chosen on validation.
pub fn evaluation_table(ev: &Evaluation) -> String {
    let mut at = String::new();
    if let (Some(t), Some(r)) = (ev.threshold, &ev.at_threshold) {
        at.push_str(&format!(
            "\nat the threshold chosen on validation: {:.4} (maximum {}, {:.4} there)\n{:<10} {:>7} {:>7} {:>7} {:>7} {:>7}  confusion tn/fp/fn/tp\n",
            t.value,
            t.criterion.as_str(),
            t.score,
            "studies",
            "kappa",
            "acc",
            "sens",
            "spec",
            "F1"
        ));
        let rows = std::iter::once(("all".to_string(), &r.studies))
            .chain(r.study_body_parts.iter().map(|(k, v)| (k.clone(), v)));
        for (name, b) in rows {
            let c = &b.confusion;
            at.push_str(&format!(
                "{:<10} {:>7} {:>7} {:>7} {:>7} {:>7}  {}/{}/{}/{}\n",
                name,
                fmt_opt(b.kappa),
                fmt_opt(b.accuracy),
                fmt_opt(b.recall),
                fmt_opt(b.specificity),
                fmt_opt(b.f1),
                c.true_negative,
                c.false_positive,
                c.false_negative,
                c.true_positive
            ));
        }
    }
    let tta = if ev.tta == Tta::None {
        String::new()
    } else {
        format!(", test-time augmentation {}", ev.tta.as_str())
    };
    format!(
        "{}\n{}{at}",
        level_table(
            &format!(
                "study level ({} split, mean probability per study{tta})",
                ev.split
            ),
            &ev.studies
        ),
        level_table(&format!("image level ({} split)", ev.split), &ev.images)
    )
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

pub fn cmd_predict(a: &PredictArgs) -> Result<()> {
    // Each input is an image, or a study folder whose images form one study.
    let mut groups: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    for input in &a.inputs {
        if input.is_dir() {
            let mut images: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot read {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            images.sort();
            if images.is_empty() {
                bail!("{}: no PNG or JPEG images in this folder", input.display());
            }
            groups.push((input.clone(), images));
        } else if input.is_file() {
            groups.push((input.clone(), vec![input.clone()]));
        } else {
            bail!("{}: no such file or folder", input.display());
        }
    }
    let predictor = Predictor::open(&a.run, a.weights.into(), None)?;
    let threshold = predictor
        .threshold()
        .map_or(mura_metrics::DEFAULT_THRESHOLD, |t| t.value);
    let inputs: Vec<Input> = groups
        .iter()
        .flat_map(|(_, g)| g.iter().cloned().map(Input::file))
        .collect();
    let probs = predictor.predict(&inputs, a.threads, a.tta.into())?;
    let mut i = 0;
    let mut results = Vec::new();
    for (input, images) in &groups {
        let p = &probs[i..i + images.len()];
        i += images.len();
        let mean = p.iter().sum::<f64>() / p.len() as f64;
        results.push(serde_json::json!({
            "input": input.display().to_string(),
            "probability": mean,
            "abnormal": mean > threshold,
            "threshold": threshold,
            "images": images.iter().zip(p).map(|(path, q)| serde_json::json!({
                "path": path.display().to_string(), "probability": q
            })).collect::<Vec<_>>(),
        }));
        if !a.json {
            if images.len() > 1 || input.is_dir() {
                for (path, q) in images.iter().zip(p) {
                    println!("  {:.4}  {}", q, path.display());
                }
                println!(
                    "{:.4}  {}  (study: mean of {} images, {})",
                    mean,
                    input.display(),
                    images.len(),
                    if mean > threshold {
                        "abnormal"
                    } else {
                        "normal"
                    }
                );
            } else {
                println!(
                    "{:.4}  {}  ({})",
                    mean,
                    input.display(),
                    if mean > threshold {
                        "abnormal"
                    } else {
                        "normal"
                    }
                );
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string(&results)?);
    }
    Ok(())
}

/// The demo's run: a 5-block CNN (8 filters doubling, global max pooling) on gray input, balanced
/// class weights, the MURA paper's flips and ±30° rotations, Adam, early stopping on validation
/// AUC and plateau decay on validation loss.
pub fn demo_config(
    data: &Path,
    seed: u64,
    epochs: u32,
    image_size: usize,
    threads: usize,
) -> RunConfig {
    use mura_models::{CnnConfig, LocalPool, Readout};
    use mura_train::policy::{Monitor, PlateauConfig};
    RunConfig {
        name: Some("demo".into()),
        seed,
        device: "cpu".into(),
        data: mura_train::DataConfig {
            class_weights: mura_train::ClassWeighting::Balanced,
            resize: mura_augment::ResizeMode::Stretch,
            threads,
            ..mura_train::DataConfig::new(Some(data.to_path_buf()))
        },
        model: ModelConfig {
            in_channels: 1,
            input_size: Some(image_size),
            cnn: Some(CnnConfig {
                blocks: 5,
                filters: 8,
                pool: Some(LocalPool::Max),
                readout: Readout::GlobalMax,
                dropout: 0.2,
                ..CnnConfig::custom_cnn()
            }),
            ..ModelConfig::new(Arch::CustomCnn)
        },
        pretrained: None,
        train: mura_train::TrainConfig {
            epochs,
            batch_size: 32,
            optimizer: mura_train::OptimizerConfig::adam(3e-3),
            monitor: Monitor::ValAuc,
            early_stopping: Some(mura_train::EarlyStoppingSettings {
                monitor: Monitor::ValAuc,
                patience: 3,
                min_delta: 0.0,
                restore_best: true,
            }),
            plateau: Some(PlateauConfig {
                monitor: Monitor::ValLoss,
                factor: 0.2,
                patience: 2,
                cooldown: 0,
                min_lr: 1e-5,
                min_delta: 0.0,
            }),
            ..mura_train::TrainConfig::default()
        },
    }
}
