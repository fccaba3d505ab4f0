//! `mura model` and `mura bench`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mura_models::checkpoint::{self, LoadOptions};
use mura_models::inspect::{forward_file, zoo};
use mura_models::{Arch, Model, Trainable, summarize};
use mura_train::bench::{BenchMode, ModelBench, bench_model as run_model_bench};
use mura_train::{ExportOptions, export_model, export_run};

use crate::args::{
    BenchModelArgs, BenchPipelineArgs, ExportArgs, ExportFormat, ModeArg, ModelArgs,
};

pub fn model(a: &ModelArgs) -> Result<()> {
    if a.arch == "list" {
        return list(a);
    }
    let arch = Arch::from_name(&a.arch)?;
    let config = a.config(arch);
    let dev = candle_core::Device::Cpu;
    let (mut model, varmap) = Model::with_seed(&config, 0, &dev)?;
    if let Some(stage) = &a.trainable_from {
        model.set_trainable(&Trainable::From(stage.clone()))?;
    }
    if a.check {
        let Some(weights) = &a.weights else {
            bail!("--check needs --weights FILE");
        };
        let problems = checkpoint::check(&model, &varmap, weights, LoadOptions::default())?;
        for p in &problems {
            println!("{p}");
        }
        if !problems.is_empty() {
            bail!(
                "{} does not fit {}: {} tensor(s) at fault (listed above)",
                weights.display(),
                config.run_name(),
                problems.len()
            );
        }
        let n = checkpoint::read_header(weights)?.len();
        let (w, name) = (weights.display(), config.run_name());
        println!("{w} fits {name} ({n} tensors)");
    }
    if let Some(input) = &a.forward {
        let Some(out) = &a.out else {
            bail!("--forward needs --out OUT.safetensors");
        };
        let r = forward_file(&model, &varmap, a.weights.as_deref(), input, out)?;
        println!(
            "wrote logits {:?} to {} ({} tensors loaded, {} ignored)",
            r.dims,
            out.display(),
            r.loaded,
            r.ignored
        );
    }
    if a.summary || !(a.check || a.forward.is_some()) {
        let s = summarize(&model, &varmap, &dev)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            println!("{s}");
        }
    }
    Ok(())
}

/// `mura model list`: every architecture with these flags.
fn list(a: &ModelArgs) -> Result<()> {
    let entries = zoo(|arch| a.config(arch))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    println!(
        "{:<15} {:>9} {:>13} {:>9}  timm weights",
        "model", "input", "params", "features"
    );
    for e in entries {
        let (c, s) = (e.in_channels, e.input_size);
        println!(
            "{:<15} {:>9} {:>13} {:>9}  {}",
            e.arch.name(),
            format!("{c}×{s}×{s}"),
            e.params,
            e.num_features,
            e.timm_tag.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

pub fn bench_model(a: &BenchModelArgs) -> Result<()> {
    let arch = Arch::from_name(&a.arch)?;
    if a.threads == 0 {
        bail!("--threads must be at least 1");
    }
    // candle and gemm size their thread pools once per process, from RAYON_NUM_THREADS: a
    // process with another count runs this command again with the variable set.
    let wanted = a.threads.to_string();
    if std::env::var("RAYON_NUM_THREADS").ok().as_deref() != Some(wanted.as_str()) {
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("RAYON_NUM_THREADS", &wanted)
            .status()
            .context("restarting with RAYON_NUM_THREADS set")?;
        if !status.success() {
            std::process::exit(status.code().unwrap_or(1));
        }
        return Ok(());
    }
    let r = run_model_bench(&ModelBench {
        arch,
        mode: match a.mode {
            ModeArg::Infer => BenchMode::Infer,
            ModeArg::Train => BenchMode::Train,
        },
        batch: a.batch,
        image_size: a.image_size,
        iters: a.iters,
        device: a.device.clone(),
        tf32: !a.no_tf32,
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} ({} kernels) {} {} b{} @{}: {:.2} img/s ({:.2} s/step), peak RSS {}",
            r.implementation,
            r.kernels,
            r.arch,
            r.mode.as_str(),
            r.batch,
            r.image_size,
            r.images_per_sec,
            r.seconds_per_step,
            r.peak_rss_mb
                .map_or("unknown".into(), |m| format!("{m:.0} MB"))
        );
    }
    Ok(())
}

pub fn bench_pipeline(a: &BenchPipelineArgs) -> Result<()> {
    let indexed = a.index.index()?;
    let d = &indexed.dataset;
    let files: Vec<PathBuf> = d
        .images()
        .iter()
        .take(a.limit)
        .map(|r| r.file(d.base()))
        .collect();
    if files.is_empty() {
        bail!("{}: no images to benchmark", a.index.root.display());
    }
    let r = mura_augment::bench_pipeline(files, a.threads, a.size, a.epochs)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "mura pipeline threads={}: {:.1} img/s (decode alone {:.1} img/s, {:.0}%) over {} images at {}px",
            r.threads,
            r.images_per_sec,
            r.decode_images_per_sec,
            100.0 * r.ratio_to_decode,
            r.images,
            r.size
        );
    }
    Ok(())
}

/// `mura export`: a run, or an architecture of the zoo, as an ONNX file.
pub fn export(a: &ExportArgs) -> Result<()> {
    let ExportFormat::Onnx = a.format;
    let options = ExportOptions {
        opset: a.opset,
        with_features: a.with_features,
        weights: a.weights.into(),
    };
    let report = match (&a.run, &a.arch) {
        (Some(run), _) => export_run(run, &a.out, &options)?,
        (None, Some(arch)) => {
            let config = a.config(Arch::from_name(arch)?);
            export_model(
                &config,
                a.model_weights.as_deref(),
                a.seed,
                &a.out,
                &options,
            )?
        }
        (None, None) => bail!("give a run directory or --arch NAME"),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "wrote {} ({}, opset {}, {:.1} MB, {} nodes, {} weights; outputs {})",
        report.out.display(),
        report.arch,
        report.opset,
        report.bytes as f64 / 1e6,
        report.nodes,
        report.weights,
        report.outputs.join(", ")
    );
    println!("operators: {}", report.ops.join(", "));
    for (k, v) in &report.metadata {
        println!("  {k} = {v}");
    }
    Ok(())
}
