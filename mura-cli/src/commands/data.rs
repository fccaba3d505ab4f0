//! `mura stats`, `split`, `check`, `synth` and `augment-preview`.

use std::time::Instant;

use anyhow::{Result, bail};
use mura_data::{Indexed, SplitConfig, image_sizes, k_fold, train_val_test, write_gray_png};

use crate::args::{CheckArgs, PreviewArgs, SplitArgs, StatsArgs, SynthArgs};

fn report_skips(indexed: &Indexed) {
    for (reason, n) in indexed.skip_counts() {
        eprintln!("skipped {n} entries: {reason}");
    }
}

pub fn stats(a: &StatsArgs) -> Result<()> {
    let indexed = a.index.index()?;
    let mut s = mura_data::stats(&indexed.dataset);
    if a.sizes {
        s.sizes = Some(image_sizes(&indexed.dataset));
    }
    if a.json {
        let skipped = indexed.skip_counts();
        let value = serde_json::json!({
            "source": indexed.source,
            "stats": s,
            "skipped": skipped.iter().map(|(r, n)| serde_json::json!({"reason": r, "count": n})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        report_skips(&indexed);
        print!("{s}");
    }
    Ok(())
}

pub fn split(a: &SplitArgs) -> Result<()> {
    let indexed = a.index.index()?;
    report_skips(&indexed);
    let dataset = indexed.dataset.body_parts(&a.body_parts);
    let manifest = match a.folds {
        Some(k) => k_fold(&dataset, k, a.seed)?,
        None => {
            let config = SplitConfig {
                val_fraction: a.val_fraction,
                seed: a.seed,
            };
            train_val_test(&dataset, &config)?
        }
    };
    manifest.check_patients()?;
    manifest.save(&a.out)?;
    println!(
        "wrote {} ({} images); images per body part × label:",
        a.out.display(),
        manifest.entries.len()
    );
    print!("{}", manifest.summary());
    Ok(())
}

pub fn check(a: &CheckArgs) -> Result<()> {
    let indexed = a.index.index()?;
    report_skips(&indexed);
    let c = mura_data::check_images(&indexed.dataset, a.threads)?;
    for e in &c.unreadable {
        eprintln!("unreadable: {e}");
    }
    if let Some(first) = c.unreadable.first() {
        bail!(
            "{} of {} images cannot be decoded (first: {first})",
            c.unreadable.len(),
            c.total
        );
    }
    println!(
        "all {} images decode ({:.0} images/s on {} threads)",
        c.decoded,
        c.images_per_sec(),
        a.threads
    );
    Ok(())
}

pub fn synth(a: &SynthArgs) -> Result<()> {
    let t = Instant::now();
    let s = mura_data::synth::generate(&a.out, &a.config())?;
    println!(
        "wrote {}/MURA-v1.1: {} images, {} studies ({} abnormal), {} patients, {} RGB and {} 16-bit files, in {:.1}s",
        a.out.display(),
        s.images,
        s.studies,
        s.abnormal_studies,
        s.patients,
        s.rgb_images,
        s.sixteen_bit_images,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn preview(a: &PreviewArgs) -> Result<()> {
    let indexed = a.index.index()?;
    let g = mura_augment::preview_dataset(&indexed.dataset, &a.options())?;
    write_gray_png(&a.out, g.width, g.height, &g.pixels)?;
    println!(
        "wrote {} ({}×{}: {} images × {} draws)",
        a.out.display(),
        g.width,
        g.height,
        g.images,
        a.columns
    );
    Ok(())
}
