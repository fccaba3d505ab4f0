//! Optimisers whose whole state (moments, per-tensor step counts, learning rate) can be saved with a
//! checkpoint and restored, so a resumed run continues exactly: Adam (L2 weight decay added to the
//! gradient), AdamW (decoupled weight decay) and SGD with momentum and Nesterov, all with PyTorch's
//! update rules (`torch.optim`), checked against it. candle's AdamW keeps its state private and its
//! SGD has no momentum.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use mura_kernels::{AdamMoments, AdamStep, Decay};

use crate::TrainError;

mod config;

pub use config::OptimizerConfig;

/// Per-tensor state: first moment (or momentum buffer), second moment, steps taken. Adam's
/// moments of an f32 variable in CPU memory live in `host` (the in-place pass updates them), all
/// others in `m` and `v`; never both.
#[derive(Debug, Clone, Default)]
struct Slot {
    m: Option<Tensor>,
    v: Option<Tensor>,
    host: Option<AdamMoments>,
    steps: u64,
}

impl Slot {
    /// The moments as tensors shaped as `var`, moving them out of `host` if they are there.
    fn moments_as_tensors(&mut self, var: &Var) -> candle_core::Result<()> {
        if let Some(AdamMoments { m, v }) = self.host.take() {
            self.m = Some(Tensor::from_vec(m, var.shape(), var.device())?);
            self.v = Some(Tensor::from_vec(v, var.shape(), var.device())?);
        }
        Ok(())
    }
}

/// An optimiser over named variables.
#[derive(Debug)]
pub struct Optim {
    config: OptimizerConfig,
    lr: f64,
    vars: Vec<(String, Var)>,
    slots: Vec<Slot>,
    schedule: Option<Scheduled>,
    /// λ of the L2 penalty λ·Σw² added to the loss (Keras' `kernel_regularizer`); 0 for none.
    l2: f64,
}

/// A per-step schedule driving an optimiser's learning rate: before each step the rate becomes
/// `schedule.lr(base_lr, step, total_steps)`, then `step` advances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scheduled {
    pub schedule: crate::schedule::Schedule,
    pub base_lr: f64,
    pub total_steps: u64,
    /// The run's next step.
    pub step: u64,
}

impl Optim {
    pub fn new(config: OptimizerConfig, vars: Vec<(String, Var)>) -> Result<Self, TrainError> {
        config.check()?;
        let slots = vec![Slot::default(); vars.len()];
        Ok(Self {
            schedule: None,
            l2: 0.0,
            lr: config.lr(),
            config,
            vars,
            slots,
        })
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// The optimised variables, by name, in the order the updates run.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Adds λ·Σw² over the optimised kernels (rank ≥ 2) to the loss [`Optim::regularize`] returns.
    pub fn with_l2(mut self, l2: f64) -> Result<Self, TrainError> {
        if !(l2.is_finite() && l2 >= 0.0) {
            return Err(TrainError::BadParameter {
                what: "L2 coefficient",
                expected: "finite and non-negative",
                value: l2,
            });
        }
        self.l2 = l2;
        Ok(self)
    }

    /// `loss` plus the L2 penalty of the optimised variables (frozen ones are not penalised).
    pub fn regularize(&self, loss: Tensor) -> Result<Tensor, TrainError> {
        Ok(match crate::loss::l2_penalty(&self.vars, self.l2)? {
            Some(p) => {
                let p = p.to_dtype(loss.dtype())?;
                (loss + p)?
            }
            None => loss,
        })
    }

    pub fn lr(&self) -> f64 {
        self.lr
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The per-step schedule driving the learning rate, where it stands now.
    pub fn schedule(&self) -> Option<Scheduled> {
        self.schedule
    }

    /// Drives the learning rate by a per-step schedule from now on (or stops doing so).
    pub fn set_schedule(&mut self, schedule: Option<Scheduled>) {
        self.schedule = schedule;
    }

    /// The names of the optimised variables that have a gradient in `grads`, and the sum of each
    /// of those gradients, stacked into one f32 tensor on their device and not read back (`None`
    /// when no variable has a gradient): a gradient holds NaN or infinity exactly when its sum
    /// does.
    pub fn gradient_sums(
        &self,
        grads: &GradStore,
    ) -> Result<(Vec<&String>, Option<Tensor>), TrainError> {
        let mut names = Vec::new();
        let mut sums = Vec::new();
        for (name, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                names.push(name);
                sums.push(g.to_dtype(DType::F32)?.sum_all()?);
            }
        }
        let sums = match sums.is_empty() {
            true => None,
            false => Some(Tensor::stack(&sums, 0)?),
        };
        Ok((names, sums))
    }

    /// The first optimised variable whose gradient holds NaN or infinity, with the sum of that
    /// gradient (NaN or ±inf); `None` when all are finite. One reduction per variable and a
    /// single read-back.
    pub fn non_finite_gradient(
        &self,
        grads: &GradStore,
    ) -> Result<Option<(String, f64)>, TrainError> {
        let (names, sums) = self.gradient_sums(grads)?;
        let Some(sums) = sums else {
            return Ok(None);
        };
        let sums: Vec<f32> = sums.to_vec1()?;
        Ok(names
            .into_iter()
            .zip(sums)
            .find(|(_, s)| !s.is_finite())
            .map(|(n, s)| (n.clone(), f64::from(s))))
    }

    /// Applies one update from `grads`; variables without a gradient are left alone (their state
    /// does not advance), as in PyTorch.
    pub fn step(&mut self, grads: &GradStore) -> Result<(), TrainError> {
        if let Some(s) = &mut self.schedule {
            self.lr = s.schedule.lr(s.base_lr, s.step, s.total_steps);
            s.step += 1;
        }
        let lr = self.lr;
        for ((_, var), slot) in self.vars.iter().zip(self.slots.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // candle's gradients of leaves still reference the forward graph (only accumulated ones
            // are detached): a moment built from one would keep every step's activations alive.
            let p = &var.as_tensor().detach();
            let g = g.detach().to_dtype(p.dtype())?;
            slot.steps += 1;
            let next = match self.config {
                OptimizerConfig::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => {
                    let decay = Decay::Coupled(weight_decay as f32);
                    if adam_in_place(var, &g, slot, lr, (beta1, beta2), eps, decay)? {
                        continue;
                    }
                    slot.moments_as_tensors(var)?;
                    let g = l2_into_grad(g, p, weight_decay)?;
                    adam(p, &g, slot, lr, beta1, beta2, eps)?
                }
                OptimizerConfig::AdamW {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => {
                    let decay = Decay::Decoupled((1.0 - lr * weight_decay) as f32);
                    if adam_in_place(var, &g, slot, lr, (beta1, beta2), eps, decay)? {
                        continue;
                    }
                    slot.moments_as_tensors(var)?;
                    let p = (p * (1.0 - lr * weight_decay))?;
                    adam(&p, &g, slot, lr, beta1, beta2, eps)?
                }
                OptimizerConfig::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                    ..
                } => {
                    let g = l2_into_grad(g, p, weight_decay)?;
                    let g = if momentum > 0.0 {
                        let buf = match &slot.m {
                            Some(b) => ((b * momentum)? + &g)?,
                            None => g.clone(),
                        };
                        let d = if nesterov {
                            (&g + (&buf * momentum)?)?
                        } else {
                            buf.clone()
                        };
                        slot.m = Some(buf);
                        d
                    } else {
                        g
                    };
                    (p - (g * lr)?)?
                }
            };
            var.set(&next)?;
        }
        Ok(())
    }

    /// The full state as named tensors (`optim.m.<var>`, `optim.v.<var>`, `optim.steps.<var>`,
    /// `optim.lr`), to be saved beside the weights.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut out = HashMap::new();
        let dev = self
            .vars
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        out.insert("optim.lr".into(), Tensor::new(&[self.lr], &dev)?);
        for ((name, var), slot) in self.vars.iter().zip(&self.slots) {
            if let Some(AdamMoments { m, v }) = &slot.host {
                let tensor = |x: &[f32]| Tensor::from_slice(x, var.shape(), var.device());
                out.insert(format!("optim.m.{name}"), tensor(m)?);
                out.insert(format!("optim.v.{name}"), tensor(v)?);
            }
            if let Some(m) = &slot.m {
                out.insert(format!("optim.m.{name}"), m.clone());
            }
            if let Some(v) = &slot.v {
                out.insert(format!("optim.v.{name}"), v.clone());
            }
            out.insert(
                format!("optim.steps.{name}"),
                Tensor::new(&[slot.steps as f64], &dev)?,
            );
        }
        Ok(out)
    }

    /// Restores a state written by [`Optim::state_tensors`] for the same variables. A moment of the
    /// wrong shape or a state for an unknown variable is an error and changes nothing.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        let index: HashMap<&str, usize> = self
            .vars
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        let mut slots = vec![Slot::default(); self.vars.len()];
        let mut lr = self.lr;
        for (key, t) in tensors {
            let Some(rest) = key.strip_prefix("optim.") else {
                continue;
            };
            if rest == "lr" {
                lr = scalar(t, key)?;
                continue;
            }
            let (kind, name) =
                rest.split_once('.')
                    .ok_or_else(|| TrainError::BadOptimizerState {
                        reason: format!("unknown entry `{key}`"),
                    })?;
            let i = *index
                .get(name)
                .ok_or_else(|| TrainError::BadOptimizerState {
                    reason: format!("`{key}` names no trainable variable"),
                })?;
            let var = &self.vars[i].1;
            match kind {
                "steps" => slots[i].steps = scalar(t, key)? as u64,
                "m" | "v" => {
                    if t.dims() != var.dims() {
                        return Err(TrainError::BadOptimizerState {
                            reason: format!(
                                "`{key}` has shape {:?}, its variable {:?}",
                                t.dims(),
                                var.dims()
                            ),
                        });
                    }
                    let t = t.to_dtype(var.dtype())?.to_device(var.device())?;
                    if kind == "m" {
                        slots[i].m = Some(t);
                    } else {
                        slots[i].v = Some(t);
                    }
                }
                _ => {
                    return Err(TrainError::BadOptimizerState {
                        reason: format!("unknown entry `{key}`"),
                    });
                }
            }
        }
        self.slots = slots;
        self.lr = lr;
        Ok(())
    }
}

fn scalar(t: &Tensor, key: &str) -> Result<f64, TrainError> {
    let v: Vec<f64> = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    match v.as_slice() {
        [x] if x.is_finite() => Ok(*x),
        _ => Err(TrainError::BadOptimizerState {
            reason: format!("`{key}` should hold one finite number"),
        }),
    }
}

/// `g + wd·p`: coupled L2 weight decay (PyTorch's Adam and SGD `weight_decay`).
fn l2_into_grad(g: Tensor, p: &Tensor, weight_decay: f64) -> candle_core::Result<Tensor> {
    if weight_decay > 0.0 {
        g + (p * weight_decay)?
    } else {
        Ok(g)
    }
}

/// PyTorch's Adam update of `p` (weight decay already applied), advancing the moments in `slot`.
fn adam(
    p: &Tensor,
    g: &Tensor,
    slot: &mut Slot,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let m = match &slot.m {
        Some(m) => ((m * beta1)? + (g * (1.0 - beta1))?)?,
        None => (g * (1.0 - beta1))?,
    };
    let v = match &slot.v {
        Some(v) => ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?,
        None => (g.sqr()? * (1.0 - beta2))?,
    };
    let t = slot.steps as i32;
    let bc1 = 1.0 - beta1.powi(t);
    let bc2 = 1.0 - beta2.powi(t);
    let denom = ((v.sqrt()? / bc2.sqrt())? + eps)?;
    let next = (p - ((&m / denom)? * (lr / bc1))?)?;
    slot.m = Some(m);
    slot.v = Some(v);
    Ok(next)
}

/// [`adam`] in place for an f32 variable in CPU memory ([`mura_kernels::adam_in_place`]: one
/// parallel pass, the moments kept as vectors in the slot); `false` where it does not apply
/// (another dtype or device, a strided tensor) and nothing was changed.
fn adam_in_place(
    var: &Var,
    g: &Tensor,
    slot: &mut Slot,
    lr: f64,
    (beta1, beta2): (f64, f64),
    eps: f64,
    decay: Decay,
) -> candle_core::Result<bool> {
    if !mura_kernels::adam_applies(var, g) {
        return Ok(false);
    }
    let n = var.elem_count();
    let host = |t: &Tensor| {
        t.dtype() == DType::F32
            && t.device().is_cpu()
            && t.elem_count() == n
            && t.layout().is_contiguous()
    };
    let mut moments = match (slot.host.take(), &slot.m, &slot.v) {
        (Some(h), ..) => h,
        (None, Some(m), Some(v)) if host(m) && host(v) => AdamMoments {
            m: m.flatten_all()?.to_vec1()?,
            v: v.flatten_all()?.to_vec1()?,
        },
        (None, None, None) => AdamMoments::zeros(n),
        (None, ..) => return Ok(false),
    };
    slot.m = None;
    slot.v = None;
    let step = AdamStep {
        lr,
        beta1,
        beta2,
        eps,
        t: slot.steps,
        decay,
    };
    let done = mura_kernels::adam_in_place(var, g, &mut moments, step);
    // The moments go back to the slot whether or not the pass ran (it checks before it writes).
    slot.host = Some(moments);
    done.map(|()| true)
}

impl candle_nn::Optimizer for Optim {
    type Config = OptimizerConfig;

    /// Variables named by position (`0`, `1`, ...); prefer [`Optim::new`] with real names so the
    /// saved state says what it belongs to.
    fn new(vars: Vec<Var>, config: OptimizerConfig) -> candle_core::Result<Self> {
        let named = vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect();
        Optim::new(config, named).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        Optim::step(self, grads).map_err(|e| match e {
            TrainError::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        })
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
}

#[cfg(test)]
mod tests;
