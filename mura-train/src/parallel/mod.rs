//! Data-parallel training: each rank holds a replica of the model and optimiser, takes its
//! shard of every global batch, and the ranks' gradients are summed by an [`AllReduce`] (each
//! scaled by its shard's share of the batch, so the sum is the one-process gradient of the mean
//! loss) before every rank applies the same update. Replicas that start equal stay equal.
//!
//! [`ThreadGroup`] is the in-process all-reduce (ranks as threads of one process, summing in rank
//! order, so the result is the same bits on every rank and every run); `NcclGroup` (the `nccl`
//! feature) reduces GPU memory over NCCL. [`Workers`] runs ranks 1.. of a `fit` as threads beside
//! rank 0.

mod group;
#[cfg(feature = "nccl")]
mod nccl;
mod workers;

use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use mura_kernels::{StatsReduce, SyncBatchNorm, with_sync_batch_norm};
use mura_models::Model;

pub use group::ThreadGroup;
#[cfg(feature = "nccl")]
pub use nccl::NcclGroup;
pub use workers::Workers;

use crate::TrainError;
use crate::epoch::Batch;
use crate::loss::bce_with_logits;
use crate::optim::Optim;

/// Collective operations among the ranks of a data-parallel job.
pub trait AllReduce: Send + Sync {
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Replaces `data` on every rank with the element-wise sum of every rank's `data` (the same
    /// values on every rank). Every rank calls it, with buffers of the same length.
    fn all_reduce_sum(&self, rank: usize, data: &mut [f32]) -> Result<(), TrainError>;
    /// Replaces `data` on every rank with rank `root`'s.
    fn broadcast(&self, rank: usize, root: usize, data: &mut [f32]) -> Result<(), TrainError>;
    /// Called by a rank that failed: the others' collectives end with an error naming `reason`
    /// instead of waiting for it.
    fn abort(&self, reason: &str);
    /// The element-wise sum over the ranks of the f32 tensor `t`, on `t`'s device. Through host
    /// memory unless the group reduces device memory itself (NCCL).
    fn all_reduce_tensor(&self, rank: usize, t: &Tensor) -> Result<Tensor, TrainError> {
        through_host(self, rank, t)
    }
}

/// [`AllReduce::all_reduce_tensor`] through host memory: `t` read back, summed by
/// [`AllReduce::all_reduce_sum`], put back on its device.
fn through_host<G: AllReduce + ?Sized>(
    group: &G,
    rank: usize,
    t: &Tensor,
) -> Result<Tensor, TrainError> {
    let mut data = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    group.all_reduce_sum(rank, &mut data)?;
    Ok(Tensor::from_vec(data, t.shape(), t.device())?)
}

/// The values of `tensors`, one after another, as f32, in one read-back.
fn flatten(tensors: &[Tensor]) -> Result<Vec<f32>, TrainError> {
    if tensors.is_empty() {
        return Ok(Vec::new());
    }
    let flat = tensors
        .iter()
        .map(|t| t.to_dtype(DType::F32)?.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&flat, 0)?.to_vec1::<f32>()?)
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

/// What one rank's step gave.
#[derive(Debug, Clone, PartialEq)]
pub struct RankStep {
    /// The mean weighted loss of the whole global batch (the same on every rank).
    pub loss: f64,
    /// This rank's shard's training-time probabilities, in the shard's order.
    pub probabilities: Vec<f32>,
}

/// One rank's place in a data-parallel job.
#[derive(Clone)]
pub struct Rank {
    /// The collectives every rank of the job calls.
    pub group: Arc<dyn AllReduce>,
    /// This rank, from 0.
    pub rank: usize,
    /// Training-mode BatchNorms normalise with the statistics of every rank's shard together
    /// (as one process with the whole batch) instead of their own shard's.
    pub sync_batch_norm: bool,
}

impl std::fmt::Debug for Rank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rank")
            .field("rank", &self.rank)
            .field("world", &self.group.world())
            .field("sync_batch_norm", &self.sync_batch_norm)
            .finish()
    }
}

impl StatsReduce for Rank {
    fn world(&self) -> usize {
        self.group.world()
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn sum(&self, data: &mut [f32]) -> candle_core::Result<()> {
        use candle_core::Context;
        self.group
            .all_reduce_sum(self.rank, data)
            .context("summing BatchNorm statistics over the ranks")
    }
}

/// One data-parallel training step of `rank` on its `shard` of a global batch of
/// `global_batch` images: train-mode forward, weighted BCE (plus the optimiser's penalty)
/// scaled by the shard's share of the batch, backward, the gradients summed over the ranks with
/// the loss, then the optimiser's update. A rank with an empty shard (a last batch smaller than
/// the ranks) contributes nothing; with synchronised BatchNorm it still runs a stand-in image
/// that counts for nothing, to meet the others at every BatchNorm. A non-finite loss or gradient
/// stops every rank before the update (each sees the same reduced values); any other failure
/// aborts the group. `at` is the (epoch, batch), counted from 1, that an error names.
pub fn parallel_step(
    model: &Model,
    optim: &mut Optim,
    shard: &Batch,
    global_batch: usize,
    rank: &Rank,
    at: (u64, u64),
) -> Result<RankStep, TrainError> {
    let out = rank_step(model, optim, shard, global_batch, rank, at).map_err(unwrap_parallel);
    if let Err(e) = &out {
        rank.group.abort(&format!("rank {}: {e}", rank.rank));
    }
    out
}

/// A collective's own error, when it reached the step through a candle op (a synchronised
/// BatchNorm's reduction), so that it reads as the group's.
fn unwrap_parallel(e: TrainError) -> TrainError {
    fn find(e: &candle_core::Error) -> Option<&TrainError> {
        match e {
            candle_core::Error::WithBacktrace { inner, .. }
            | candle_core::Error::Context { inner, .. } => find(inner),
            candle_core::Error::WrappedContext { wrapped, .. } => wrapped.downcast_ref(),
            _ => None,
        }
    }
    match &e {
        TrainError::Candle(c) => match find(c) {
            Some(TrainError::Parallel { reason }) => TrainError::Parallel {
                reason: reason.clone(),
            },
            _ => e,
        },
        _ => e,
    }
}

/// The local gradients (`None` for a rank without images), the share-scaled loss and the
/// probabilities of one rank's shard.
type Local = (Option<GradStore>, Tensor, Option<Tensor>);

fn local_pass(
    model: &Model,
    optim: &Optim,
    shard: &Batch,
    share: f64,
    rank: &Rank,
    dev: &candle_core::Device,
) -> Result<Local, TrainError> {
    let idle = shard.indices.is_empty();
    if idle && !rank.sync_batch_norm {
        return Ok((None, Tensor::zeros(1, DType::F32, dev)?, None));
    }
    let stand_in;
    let batch = if idle {
        let (_, rest) = shard.x.dims().split_first().unwrap_or((&0, &[]));
        let x_shape: Vec<usize> = std::iter::once(1).chain(rest.iter().copied()).collect();
        let (_, y_rest) = shard.y.dims().split_first().unwrap_or((&0, &[]));
        let y_shape: Vec<usize> = std::iter::once(1).chain(y_rest.iter().copied()).collect();
        stand_in = Batch {
            x: Tensor::zeros(x_shape, shard.x.dtype(), shard.x.device())?,
            y: Tensor::zeros(y_shape.clone(), shard.y.dtype(), shard.y.device())?,
            w: Tensor::zeros(y_shape, shard.w.dtype(), shard.w.device())?,
            indices: Vec::new(),
            features: shard.features,
        };
        &stand_in
    } else {
        shard
    };
    let sync = rank
        .sync_batch_norm
        .then(|| SyncBatchNorm::new(Arc::new(rank.clone()), !idle));
    with_sync_batch_norm(sync, || {
        let logits = batch.logits(model, true)?;
        let loss = optim.regularize(bce_with_logits(&logits, &batch.y, Some(&batch.w))?)?;
        // Scaled before the backward: a synchronised BatchNorm sums the ranks' gradients of its
        // statistics, which must be those of the one loss of the whole batch. By a tensor, not a
        // scalar: candle's backward drops the inputs of a product with the scalar 0 (a stand-in's
        // share), and the stand-in must meet the others in its backward's reductions.
        let loss = loss.broadcast_mul(&Tensor::new(share as f32, dev)?.to_dtype(loss.dtype())?)?;
        let grads = loss.backward()?;
        let probs = candle_nn::ops::sigmoid(&logits.narrow(1, 0, 1)?.detach())?.flatten_all()?;
        Ok((
            Some(grads),
            loss.detach().reshape(1)?,
            (!idle).then_some(probs),
        ))
    })
}

fn rank_step(
    model: &Model,
    optim: &mut Optim,
    shard: &Batch,
    global_batch: usize,
    rank: &Rank,
    at: (u64, u64),
) -> Result<RankStep, TrainError> {
    let share = shard.indices.len() as f64 / global_batch.max(1) as f64;
    let vars = optim.vars();
    let dev = match vars.first() {
        Some((_, v)) => v.device().clone(),
        None => {
            return Err(TrainError::BadOptimizerState {
                reason: "no variable to train".into(),
            });
        }
    };
    let (grads, loss, probs) = local_pass(model, optim, shard, share, rank, &dev)?;
    // One buffer: every variable's gradient (zeros where it has none), one presence flag per
    // variable, the loss; then this rank's probabilities, which are not reduced.
    let mut parts = Vec::with_capacity(vars.len() + 3);
    let mut present = Vec::with_capacity(vars.len());
    for (_, v) in vars {
        let g = grads.as_ref().and_then(|g| g.get(v.as_tensor()));
        present.push(if g.is_some() { 1f32 } else { 0. });
        parts.push(match g {
            Some(g) => g.to_dtype(DType::F32)?,
            None => Tensor::zeros(v.shape(), DType::F32, &dev)?,
        });
    }
    parts.push(Tensor::from_slice(&present, vars.len(), &dev)?);
    parts.push(loss.to_dtype(DType::F32)?.reshape(1)?);
    let parts = parts
        .iter()
        .map(Tensor::flatten_all)
        .collect::<candle_core::Result<Vec<_>>>()?;
    let reduced = rank
        .group
        .all_reduce_tensor(rank.rank, &Tensor::cat(&parts, 0)?)?;
    // One read-back: the reduced buffer and this rank's probabilities.
    let n_probs = probs.as_ref().map_or(0, Tensor::elem_count);
    let mut flat = flatten(&[vec![reduced], probs.into_iter().collect()].concat())?;
    let probabilities = flat.split_off(flat.len() - n_probs);
    let loss = f64::from(flat.pop().unwrap_or(f32::NAN));
    let non_finite = |what: String, value: f64| TrainError::NonFinite {
        what,
        epoch: at.0,
        batch: at.1,
        value,
    };
    if !loss.is_finite() {
        return Err(non_finite("the loss".into(), loss));
    }
    let flags = flat.split_off(flat.len().saturating_sub(vars.len()));
    let mut reduced = GradStore::default();
    let like: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().clone()).collect();
    let mut at_elem = 0;
    for (((name, v), flag), g) in vars.iter().zip(&flags).zip(unflatten(&flat, &like)?) {
        let n = v.elem_count();
        let piece = &flat[at_elem..at_elem + n];
        at_elem += n;
        if *flag == 0.0 {
            continue;
        }
        if piece.iter().any(|x| !x.is_finite()) {
            let sum: f32 = piece.iter().sum();
            return Err(non_finite(
                format!("the gradient of {name}"),
                f64::from(sum),
            ));
        }
        reduced.insert(v.as_tensor(), g);
    }
    optim.step(&reduced)?;
    Ok(RankStep {
        loss,
        probabilities,
    })
}

/// Rank `rank`'s shard of `batch` among `world` ranks: a contiguous slice of its images, the
/// first `len % world` ranks taking one more (the same images, in the same order, as one process
/// reading the batch whole); empty when the batch has fewer images than `rank + 1`.
pub fn shard(batch: &Batch, rank: usize, world: usize) -> Result<Batch, TrainError> {
    let n = batch.indices.len();
    let (base, extra) = (n / world.max(1), n % world.max(1));
    let start = (rank * base + rank.min(extra)).min(n);
    let len = (base + usize::from(rank < extra)).min(n - start);
    Ok(Batch {
        x: batch.x.narrow(0, start, len)?,
        y: batch.y.narrow(0, start, len)?,
        w: batch.w.narrow(0, start, len)?,
        indices: batch.indices[start..start + len].to_vec(),
        features: batch.features,
    })
}
