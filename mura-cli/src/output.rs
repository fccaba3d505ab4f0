//! What the commands print: the progress of a run (bars on stderr, a line per epoch, or JSON
//! lines), the Ctrl-C handler, and the evaluation tables.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mura_train::compare::Comparison;
use mura_train::evaluate::{Level, Scored};
use mura_train::{EpochProgress, Evaluation, FitOptions, HistoryRow, Observer, Tta};

use crate::args::OutputArgs;

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

pub fn fmt_opt(v: Option<f64>) -> String {
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

/// Fit options whose stop flag a Ctrl-C handler sets: the run stops at the next batch boundary
/// and saves its state; a second Ctrl-C exits at once.
pub fn interruptible() -> FitOptions {
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
    FitOptions {
        stop: Some(flag),
        stop_after_steps: None,
    }
}

fn ci(scored: &Scored, name: &str) -> String {
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

/// The study-level figures at the threshold chosen on validation, when there is one.
fn threshold_table(ev: &Evaluation) -> String {
    let (Some(t), Some(r)) = (ev.threshold, &ev.at_threshold) else {
        return String::new();
    };
    let mut at = format!(
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
    );
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
    at
}

/// The evaluation as two tables: study level (the MURA paper's unit) and image level, then the
/// study-level figures at the threshold chosen on validation.
pub fn evaluation_table(ev: &Evaluation) -> String {
    let tta = if ev.tta == Tta::None {
        String::new()
    } else {
        format!(", test-time augmentation {}", ev.tta.as_str())
    };
    let studies = format!(
        "study level ({} split, mean probability per study{tta})",
        ev.split
    );
    format!(
        "{}\n{}{}{}",
        level_table(&studies, &ev.studies),
        level_table(&format!("image level ({} split)", ev.split), &ev.images),
        threshold_table(ev),
        calibration_lines(ev)
    )
}

/// The Brier score and expected calibration error at both levels, before and after the run's
/// temperature, and what the intervals resample.
fn calibration_lines(ev: &Evaluation) -> String {
    let c = &ev.calibration;
    let line = |name: &str, l: &mura_train::evaluate::CalibrationLevel| {
        format!(
            "{name:<7} Brier {:.4} (before scaling {:.4})  ECE {:.4} (before {:.4})  MCE {:.4}\n",
            l.brier, l.brier_before, l.ece, l.ece_before, l.mce
        )
    };
    let t = c
        .temperature
        .map_or("no temperature".into(), |t| format!("temperature {t:.3}"));
    format!(
        "\ncalibration ({t}; ECE and MCE over 10 equal-width bins)\n{}{}95% intervals: bootstrap over patients (study level) and studies (image level)\n",
        line("studies", &c.studies),
        line("images", &c.images)
    )
}

/// `mura compare`'s table: per row (overall, then each body part) the studies, both AUCs with
/// DeLong's z, p-value and interval of the difference, and the kappa and accuracy differences
/// with their paired bootstrap intervals and p-values.
pub fn comparison_table(c: &Comparison) -> String {
    let mut out = format!(
        "A = {}\nB = {}\n{} split, study level; kappa and accuracy at each run's threshold (A {:.4}, B {:.4}); intervals 95%\n",
        c.a.display(),
        c.b.display(),
        c.split,
        c.threshold_a,
        c.threshold_b
    );
    out.push_str(&format!(
        "{:<10} {:>7} {:>13} {:>8} {:>9} {:>18}  {:>24}  {:>24}\n",
        "part",
        "studies",
        "AUC A / B",
        "z",
        "p",
        "AUC A−B [CI]",
        "kappa A−B [CI] p",
        "acc A−B [CI] p"
    ));
    let rows = std::iter::once(("all".to_string(), &c.overall))
        .chain(c.parts.iter().map(|(k, v)| (k.clone(), v)));
    for (name, p) in rows {
        let (aucs, z, pv, diff) = match &p.auc {
            Some(t) => (
                format!("{:.3} / {:.3}", t.auc_a, t.auc_b),
                format!("{:.2}", t.z),
                format!("{:.4}", t.p_value),
                format!("{:+.3} [{:+.3}, {:+.3}]", t.difference, t.lower, t.upper),
            ),
            None => ("—".into(), "—".into(), "—".into(), "—".into()),
        };
        let paired = |i: &Option<mura_metrics::PairedInterval>| match i {
            Some(i) => format!(
                "{:+.3} [{:+.3}, {:+.3}] {:.3}",
                i.difference, i.lower, i.upper, i.p_value
            ),
            None => "—".into(),
        };
        out.push_str(&format!(
            "{:<10} {:>7} {:>13} {:>8} {:>9} {:>18}  {:>24}  {:>24}\n",
            name,
            p.studies,
            aucs,
            z,
            pv,
            diff,
            paired(&p.kappa),
            paired(&p.accuracy)
        ));
    }
    out
}
