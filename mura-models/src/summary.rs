//! `model.summary()` as Keras prints it: one row per stage with its output shape, parameters and
//! multiply-accumulates, and the totals (GFLOPs = 2 × MACs, for one image).

use std::fmt;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::Serialize;

use crate::ModelError;
use crate::layers::{count_macs, is_running_stat};
use crate::model::Model;
use crate::vars::lock_vars;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SummaryRow {
    pub name: String,
    /// Output shape for one image (C, H, W) or (classes).
    pub output: Vec<usize>,
    pub params: usize,
    pub macs: u64,
    pub trainable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub model: String,
    pub input: Vec<usize>,
    pub rows: Vec<SummaryRow>,
    /// Trainable-kind parameters (BatchNorm running statistics excluded, as PyTorch and Keras'
    /// "trainable" count them).
    pub params: usize,
    /// Parameters the optimiser updates under the current freezing.
    pub trainable_params: usize,
    pub macs: u64,
}

impl Summary {
    pub fn gflops(&self) -> f64 {
        2.0 * self.macs as f64 / 1e9
    }
}

/// Runs one zero image through `model` in evaluation mode, stage by stage.
pub fn summarize(model: &Model, varmap: &VarMap, device: &Device) -> Result<Summary, ModelError> {
    let cfg = model.pretrained_cfg();
    let [c, h, w] = cfg.input_size;
    let sizes: Vec<(String, usize)> = {
        let data = lock_vars(varmap);
        data.iter()
            .filter(|(n, _)| !is_running_stat(n))
            .map(|(n, v)| (n.clone(), v.elem_count()))
            .collect()
    };
    let count = |prefixes: &[String]| -> usize {
        sizes
            .iter()
            .filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p)))
            .map(|(_, s)| s)
            .sum()
    };
    let mut x = Tensor::zeros((1, c, h, w), DType::F32, device)?;
    model.check_input(&x)?;
    let mut rows = Vec::new();
    for (i, name) in model.stage_names().into_iter().enumerate() {
        let (y, macs) = count_macs(|| model.forward_stage(i, &x, false));
        x = y?;
        rows.push(SummaryRow {
            name,
            output: x.dims()[1..].to_vec(),
            params: count(&model.stage_prefixes(i)),
            macs,
            trainable: i >= model.frozen_stages(),
        });
    }
    let (y, macs) = count_macs(|| model.forward_head(&x, false));
    let y = y?;
    rows.push(SummaryRow {
        name: "head".into(),
        output: y.dims()[1..].to_vec(),
        params: count(&model.head_prefixes()),
        macs,
        trainable: true,
    });
    let params = sizes.iter().map(|(_, s)| s).sum();
    let trainable_params = model
        .trainable_vars(varmap)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    Ok(Summary {
        model: model.config().run_name(),
        input: vec![c, h, w],
        macs: rows.iter().map(|r| r.macs).sum(),
        rows,
        params,
        trainable_params,
    })
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Model: {}  (input {:?})", self.model, self.input)?;
        writeln!(
            f,
            "{:<24} {:<20} {:>14} {:>10}",
            "Stage", "Output shape", "Param #", "MMACs"
        )?;
        writeln!(f, "{}", "=".repeat(71))?;
        for r in &self.rows {
            let frozen = if r.trainable { "" } else { " (frozen)" };
            writeln!(
                f,
                "{:<24} {:<20} {:>14} {:>10.1}{frozen}",
                r.name,
                format!("{:?}", r.output),
                thousands(r.params as u64),
                r.macs as f64 / 1e6
            )?;
        }
        writeln!(f, "{}", "=".repeat(71))?;
        writeln!(f, "Total params: {}", thousands(self.params as u64))?;
        writeln!(
            f,
            "Trainable params: {}",
            thousands(self.trainable_params as u64)
        )?;
        writeln!(
            f,
            "Non-trainable params: {}",
            thousands((self.params - self.trainable_params) as u64)
        )?;
        write!(
            f,
            "Forward: {:.2} GMACs = {:.2} GFLOPs per image",
            self.macs as f64 / 1e9,
            self.gflops()
        )
    }
}
