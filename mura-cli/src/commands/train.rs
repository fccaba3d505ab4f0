//! `mura train`, `evaluate`, `predict` and `demo`.

use anyhow::Result;
use mura_train::demo::{prepare_data, run_demo};
use mura_train::ensemble::Predictor;
use mura_train::predict::predict_inputs;
use mura_train::run::resume_config;
use mura_train::{FitEnd, FitSummary, Observer, RunConfig, create_run_dir};

use crate::args::{DemoArgs, EvaluateArgs, OutputArgs, PredictArgs, TrainArgs};
use crate::output::{Progress, evaluation_table, interruptible};

pub fn train(a: &TrainArgs) -> Result<()> {
    let (config, dir) = match &a.resume {
        Some(dir) => (resume_config(dir)?, dir.clone()),
        None => {
            let base = match &a.config {
                Some(path) => RunConfig::load(path)?,
                None => RunConfig::defaults(a.arch()?.unwrap_or(mura_models::Arch::CustomCnn)),
            };
            let config = base.with_overrides(&a.overrides()?)?;
            let dir = create_run_dir(&config, &a.out)?;
            (config, dir)
        }
    };
    let mut progress = Progress::new(a.output);
    progress.message(&format!("run directory {}", dir.display()));
    let summary = mura_train::train(&config, &dir, &interruptible(), &mut progress)?;
    report_fit(&summary, a.output)
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

pub fn evaluate(a: &EvaluateArgs) -> Result<()> {
    let ev = mura_train::evaluate(&a.run, a.options())?;
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

pub fn predict(a: &PredictArgs) -> Result<()> {
    let mut predictor = Predictor::open(&a.run, a.weights.into(), None)?;
    let predictions = predict_inputs(&mut predictor, &a.inputs, &a.options())?;
    if a.json {
        println!("{}", serde_json::to_string(&predictions)?);
        return Ok(());
    }
    for p in &predictions {
        let call = if p.abnormal { "abnormal" } else { "normal" };
        let uid = p
            .study_uid
            .as_ref()
            .map(|u| format!(" [study {u}]"))
            .unwrap_or_default();
        if p.study || p.images.len() > 1 {
            for i in &p.images {
                println!("  {:.4}  {}", i.probability, i.path.display());
            }
            println!(
                "{:.4}  {}{uid}  (study: mean of {} images, {call})",
                p.probability,
                p.input.display(),
                p.images.len()
            );
        } else {
            println!("{:.4}  {}{uid}  ({call})", p.probability, p.input.display());
        }
        if let Some(ids) = &p.identifiers {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            println!(
                "        patient {} (ID {}), study date {}",
                show(&ids.patient_name),
                show(&ids.patient_id),
                show(&ids.study_date)
            );
        }
    }
    Ok(())
}

pub fn demo(a: &DemoArgs) -> Result<()> {
    let output = OutputArgs {
        quiet: a.quiet,
        json: false,
    };
    let options = a.options();
    let data = prepare_data(&options)?;
    match &data.generated {
        Some(s) => println!(
            "generated a synthetic MURA in {}: {} images, {} studies, in {:.1}s",
            data.dir.display(),
            s.images,
            s.studies,
            data.seconds
        ),
        None => println!("using the synthetic data set in {}", data.dir.display()),
    }
    for (reason, n) in data.indexed.skip_counts() {
        eprintln!("skipped {n} entries: {reason}");
    }
    print!("{}", mura_data::stats(&data.indexed.dataset));
    let mut progress = Progress::new(output);
    let d = run_demo(&options, &interruptible(), &mut progress)?;
    print!("{}", evaluation_table(&d.evaluation));
    let s = &d.evaluation.studies.overall.report;
    println!(
        "demo done in {:.0}s: study-level AUC {} and kappa {} on the held-out test split; run directory {}",
        d.seconds,
        s.auc.map_or("—".into(), |v| format!("{v:.3}")),
        s.kappa.map_or("—".into(), |v| format!("{v:.3}")),
        d.run_dir.display()
    );
    Ok(())
}
