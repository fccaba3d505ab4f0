//! Data-parallel training steps: each rank holds a replica of the model and optimiser, takes its
//! shard of every global batch, and the ranks' gradients are summed by an [`AllReduce`] (each
//! scaled by its shard's share of the batch, so the sum is the one-process gradient of the mean
//! loss) before every rank applies the same update. Replicas that start equal stay equal.
//!
//! [`ThreadGroup`] is the in-process all-reduce (ranks as threads of one process, summing in rank
//! order, so the result is the same bits on every rank and every run); a multi-GPU one implements
//! the same trait over NCCL.

use std::sync::{Barrier, Mutex};

use candle_core::{DType, Tensor};
use mura_models::Model;

use crate::TrainError;
use crate::epoch::Batch;
use crate::loss::bce_with_logits;
use crate::optim::Optim;

/// Collective operations among the ranks of a data-parallel job.
pub trait AllReduce: Send + Sync {
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Replaces `data` on every rank with the element-wise sum of every rank's `data`, summed in
    /// rank order. Every rank calls it, with buffers of the same length.
    fn all_reduce_sum(&self, rank: usize, data: &mut [f32]) -> Result<(), TrainError>;
    /// Replaces `data` on every rank with rank `root`'s.
    fn broadcast(&self, rank: usize, root: usize, data: &mut [f32]) -> Result<(), TrainError>;
}

/// An all-reduce among `world` threads of this process.
#[derive(Debug)]
pub struct ThreadGroup {
    world: usize,
    slots: Mutex<Vec<Vec<f32>>>,
    barrier: Barrier,
}

impl ThreadGroup {
    pub fn new(world: usize) -> Result<Self, TrainError> {
        if world == 0 {
            return Err(TrainError::BadParameter {
                what: "ranks",
                expected: "at least 1",
                value: 0.0,
            });
        }
        Ok(Self {
            world,
            slots: Mutex::new(vec![Vec::new(); world]),
            barrier: Barrier::new(world),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Vec<f32>>> {
        match self.slots.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Deposits `data` as rank `rank`'s, waits for every rank, reads the deposits with `read`,
    /// and waits again so that no rank deposits its next buffer before all have read.
    fn exchange(
        &self,
        rank: usize,
        data: &mut [f32],
        read: impl FnOnce(&[Vec<f32>], &mut [f32]),
    ) -> Result<(), TrainError> {
        if rank >= self.world {
            return Err(TrainError::BadParameter {
                what: "rank",
                expected: "below the number of ranks",
                value: rank as f64,
            });
        }
        self.slots()[rank] = data.to_vec();
        self.barrier.wait();
        {
            let slots = self.slots();
            if slots.iter().any(|s| s.len() != data.len()) {
                drop(slots);
                self.barrier.wait();
                return Err(TrainError::BadOptimizerState {
                    reason: "the ranks' gradient buffers differ in length".into(),
                });
            }
            read(&slots, data);
        }
        self.barrier.wait();
        Ok(())
    }
}

impl AllReduce for ThreadGroup {
    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, rank: usize, data: &mut [f32]) -> Result<(), TrainError> {
        self.exchange(rank, data, |slots, out| {
            out.fill(0.0);
            for s in slots {
                for (o, v) in out.iter_mut().zip(s) {
                    *o += v;
                }
            }
        })
    }

    fn broadcast(&self, rank: usize, root: usize, data: &mut [f32]) -> Result<(), TrainError> {
        let root = root.min(self.world - 1);
        self.exchange(rank, data, |slots, out| out.copy_from_slice(&slots[root]))
    }
}

/// The values of `tensors`, one after another, as f32.
fn flatten(tensors: &[Tensor]) -> Result<Vec<f32>, TrainError> {
    let mut out = Vec::new();
    for t in tensors {
        out.extend(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// `flat` cut back into tensors shaped and typed as `like`.
fn unflatten(flat: &[f32], like: &[Tensor]) -> Result<Vec<Tensor>, TrainError> {
    let mut at = 0;
    let mut out = Vec::with_capacity(like.len());
    for t in like {
        let n = t.elem_count();
        let piece = flat
            .get(at..at + n)
            .ok_or_else(|| TrainError::BadOptimizerState {
                reason: "a reduced buffer is shorter than the gradients".into(),
            })?;
        out.push(Tensor::from_slice(piece, t.shape(), t.device())?.to_dtype(t.dtype())?);
        at += n;
    }
    Ok(out)
}

/// Makes every rank's copy of the optimised variables of `optim` equal to rank `root`'s.
pub fn broadcast_weights(
    optim: &Optim,
    group: &dyn AllReduce,
    rank: usize,
    root: usize,
) -> Result<(), TrainError> {
    let vars = optim.vars();
    let tensors: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().clone()).collect();
    let mut flat = flatten(&tensors)?;
    group.broadcast(rank, root, &mut flat)?;
    for ((_, var), t) in vars.iter().zip(unflatten(&flat, &tensors)?) {
        var.set(&t)?;
    }
    Ok(())
}

/// One data-parallel training step of rank `rank` on its `shard` of a global batch of
/// `global_batch` images: train-mode forward, weighted BCE (plus the optimiser's penalty),
/// backward, the gradients scaled by the shard's share and summed over the ranks, then the
/// optimiser's update. Returns this rank's share of the global mean loss. `at` is the (epoch,
/// batch), counted from 1, that an error names.
pub fn parallel_step(
    model: &Model,
    optim: &mut Optim,
    shard: &Batch,
    global_batch: usize,
    group: &dyn AllReduce,
    rank: usize,
    at: (u64, u64),
) -> Result<f64, TrainError> {
    let share = shard.indices.len() as f64 / global_batch.max(1) as f64;
    let logits = shard.logits(model, true)?;
    let loss = optim.regularize(bce_with_logits(&logits, &shard.y, Some(&shard.w))?)?;
    let mut grads = loss.backward()?;
    let vars = optim.vars();
    let present: Vec<(&candle_core::Var, Tensor)> = vars
        .iter()
        .filter_map(|(_, v)| grads.get(v.as_tensor()).map(|g| (v, g.clone())))
        .collect();
    let tensors: Vec<Tensor> = present.iter().map(|(_, g)| g.clone()).collect();
    let mut flat = flatten(&tensors)?;
    flat.iter_mut().for_each(|g| *g *= share as f32);
    group.all_reduce_sum(rank, &mut flat)?;
    for ((v, _), g) in present.iter().zip(unflatten(&flat, &tensors)?) {
        grads.insert(v.as_tensor(), g);
    }
    if let Some((name, value)) = optim.non_finite_gradient(&grads)? {
        return Err(TrainError::NonFinite {
            what: format!("the gradient of {name}"),
            epoch: at.0,
            batch: at.1,
            value,
        });
    }
    optim.step(&grads)?;
    let value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
    Ok(value * share)
}

/// Rank `rank`'s shard of `batch` among `world` ranks: a contiguous slice of its images, the
/// first `len % world` ranks taking one more (the same images, in the same order, as one process
/// reading the batch whole).
pub fn shard(batch: &Batch, rank: usize, world: usize) -> Result<Batch, TrainError> {
    let n = batch.indices.len();
    let (base, extra) = (n / world.max(1), n % world.max(1));
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    Ok(Batch {
        x: batch.x.narrow(0, start, len)?,
        y: batch.y.narrow(0, start, len)?,
        w: batch.w.narrow(0, start, len)?,
        indices: batch.indices[start..start + len].to_vec(),
        features: batch.features,
    })
}
