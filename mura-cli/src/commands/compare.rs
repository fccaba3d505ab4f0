//! `mura explain`, `report`, `ensemble`, `cv` and `threshold`.

use anyhow::{Result, bail};
use mura_train::cv::{self, CV_METRICS};
use mura_train::ensemble::{EnsembleMode, Predictor, create_ensemble};
use mura_train::evaluate::choose_threshold;
use mura_train::explain::explain_images;
use mura_train::report::ReportOptions;
use mura_train::sweep::Sweep;
use mura_train::{RunConfig, TrainedRun, Weights};

use crate::args::{
    CompareArgs, CvArgs, EnsembleArgs, ExplainArgs, ReportArgs, SweepArgs, ThresholdArgs,
};
use crate::output::{Progress, comparison_table, interruptible};

pub fn explain(a: &ExplainArgs) -> Result<()> {
    let mut run = TrainedRun::open(&a.run, a.weights.into(), None)?;
    if let Some(voi) = a.voi {
        run.config.data.voi = voi;
    }
    let results = explain_images(&run, &a.images, &a.out)?;
    if a.json {
        println!("{}", serde_json::to_string(&results)?);
        return Ok(());
    }
    for e in &results {
        println!(
            "{:.4}  {}  → {}",
            e.probability,
            e.image.display(),
            e.out.display()
        );
    }
    Ok(())
}

pub fn report(a: &ReportArgs) -> Result<()> {
    let options = ReportOptions {
        sort_by: a.sort_by.clone(),
        threads: a.threads,
    };
    let s = mura_train::report::report(&a.runs, &a.out, &options)?;
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

pub fn ensemble(a: &EnsembleArgs) -> Result<()> {
    let mode = EnsembleMode::from(a.mode);
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

pub fn cv(a: &CvArgs) -> Result<()> {
    let config = RunConfig::load(&a.config)?;
    if let Some(scheduler) = a.jobs.emit {
        let program = std::env::current_exe().unwrap_or_else(|_| "mura".into());
        let s = scheduler.into();
        print!(
            "{}",
            cv::emit_array(
                s,
                &program,
                &a.config,
                &config,
                a.folds,
                &a.out,
                &a.jobs.image
            )?
        );
        return Ok(());
    }
    let mut progress = Progress::new(a.output);
    if let Some(fold) = a.fold {
        let fold = match fold {
            Some(f) => f,
            None => cv::array_task(|k| std::env::var(k).ok())? + 1,
        };
        let Some(r) = cv::run_fold(
            &config,
            a.folds,
            &a.out,
            fold,
            &interruptible(),
            &mut progress,
        )?
        else {
            bail!("fold {fold} interrupted; run the same command again to continue it");
        };
        if a.output.json {
            println!("{}", serde_json::to_string(&r)?);
        } else if !a.output.quiet {
            println!("fold {fold} of {}: {}", a.folds, r.run.display());
            print_fold_metrics(&r.metrics);
        }
        return Ok(());
    }
    let (cv, missing, unfinished) = if a.collect {
        let c = cv::collect(&config, a.folds, &a.out)?;
        (c.cv, c.missing, c.unfinished)
    } else {
        let cv = cv::cross_validate(&config, a.folds, &a.out, &interruptible(), &mut progress)?;
        (cv, vec![], vec![])
    };
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
    incomplete(
        "folds collected",
        cv.folds.len(),
        a.folds,
        &missing,
        &unfinished,
    )?;
    if cv.interrupted {
        bail!(
            "interrupted after {} of {} folds; run the same command again to continue",
            cv.folds.len(),
            a.folds
        );
    }
    Ok(())
}

fn print_fold_metrics(metrics: &std::collections::BTreeMap<String, f64>) {
    for (k, v) in metrics {
        println!("{k:<18} {v:.4}");
    }
}

/// `mura sweep`.
pub fn sweep(a: &SweepArgs) -> Result<()> {
    let sweep = Sweep::load(&a.file)?;
    if let Some(scheduler) = a.jobs.emit {
        let program = std::env::current_exe().unwrap_or_else(|_| "mura".into());
        print!(
            "{}",
            sweep.emit_array(scheduler.into(), &program, &a.jobs.image)?
        );
        return Ok(());
    }
    if a.list {
        for p in &sweep.points {
            let o: Vec<String> = p
                .overrides
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect();
            println!("{:>3}  {:<40} {}", p.index, p.name, o.join(", "));
        }
        return Ok(());
    }
    if !a.collect {
        let mut progress = Progress::new(a.output);
        let indices: Vec<usize> = match a.index {
            Some(Some(i)) => vec![i],
            Some(None) => vec![cv::array_task(|k| std::env::var(k).ok())?],
            None => (0..sweep.points.len()).collect(),
        };
        for i in indices {
            if sweep
                .run_point(i, &interruptible(), &mut progress)?
                .is_none()
            {
                bail!("point {i} interrupted; run the same command again to continue it");
            }
        }
        if a.index.is_some() {
            return Ok(());
        }
    }
    let r = sweep.collect()?;
    if a.output.json {
        println!("{}", serde_json::to_string(&r)?);
    } else if !a.output.quiet {
        println!(
            "{} points ranked by validation {} ({})",
            r.ranked.len(),
            r.metric,
            r.out.display()
        );
        for (rank, p) in r.ranked.iter().enumerate() {
            let v = p
                .metrics
                .get(&r.metric)
                .map_or("-".into(), |v| format!("{v:.4}"));
            println!("{:>3}. {v:>7}  {}", rank + 1, p.name);
        }
        println!("wrote {0}/sweep.csv and {0}/sweep.json", r.out.display());
    }
    let (done, total) = (r.ranked.len(), sweep.points.len());
    incomplete("points ranked", done, total, &r.missing, &r.unfinished)
}

/// An error naming the missing and unfinished tasks of a job array, when there are any.
fn incomplete(
    what: &str,
    done: usize,
    total: usize,
    missing: &[usize],
    unfinished: &[usize],
) -> Result<()> {
    let list = |v: &[usize]| {
        v.iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !missing.is_empty() || !unfinished.is_empty() {
        bail!(
            "{done} of {total} {what}; missing (never started): [{}]; unfinished (running, failed or cancelled): [{}]",
            list(missing),
            list(unfinished)
        );
    }
    Ok(())
}

pub fn threshold(a: &ThresholdArgs) -> Result<()> {
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

pub fn compare(a: &CompareArgs) -> Result<()> {
    let c = mura_train::compare::compare(&a.a, &a.b, a.options())?;
    if a.json {
        println!("{}", serde_json::to_string(&c)?);
    } else {
        print!("{}", comparison_table(&c));
    }
    Ok(())
}
