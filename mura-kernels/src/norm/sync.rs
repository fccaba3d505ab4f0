//! Synchronised BatchNorm: in a data-parallel step, every rank normalises its shard with the
//! statistics of the whole global batch, as one process reading the batch whole would, and the
//! backward carries the gradients of those statistics back to every rank's shard.
//!
//! The ranks meet through a [`StatsReduce`] (a sum over the ranks, in the same order on each);
//! the data-parallel step sets one for the thread running a rank with [`with_sync_batch_norm`],
//! and every training-mode BatchNorm on that thread reduces through it. Built from candle's
//! tensor ops (any device); the reduction itself goes through host memory.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

/// A sum over the ranks of a data-parallel job: every rank calls it with a buffer of the same
/// length, and each gets back the element-wise sum of all of them (the same bits on every rank).
pub trait StatsReduce: Send + Sync {
    /// Number of ranks.
    fn world(&self) -> usize;
    /// This rank, from 0.
    fn rank(&self) -> usize;
    fn sum(&self, data: &mut [f32]) -> candle_core::Result<()>;
}

/// The setting one rank's thread trains under.
#[derive(Clone)]
pub struct SyncBatchNorm {
    reduce: Arc<dyn StatsReduce>,
    /// False for a rank with no images in this batch: it runs a stand-in image through the
    /// model so that it meets the others at every BatchNorm, but its values count for nothing.
    counts: bool,
}

impl std::fmt::Debug for SyncBatchNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncBatchNorm")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl SyncBatchNorm {
    /// Statistics summed through `reduce`; this rank's values count unless `counts` is false.
    pub fn new(reduce: Arc<dyn StatsReduce>, counts: bool) -> Self {
        Self { reduce, counts }
    }
}

thread_local! {
    static SYNC: RefCell<Option<SyncBatchNorm>> = const { RefCell::new(None) };
}

/// Runs `f` with training-mode BatchNorms on this thread synchronised through `sync` (or not,
/// with `None`), restoring the previous setting afterwards. A backward keeps the setting its
/// forward ran under.
pub fn with_sync_batch_norm<R>(sync: Option<SyncBatchNorm>, f: impl FnOnce() -> R) -> R {
    /// Puts the previous setting back, also when `f` panics.
    struct Restore(Option<SyncBatchNorm>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            SYNC.with(|s| *s.borrow_mut() = before);
        }
    }
    let _restore = Restore(SYNC.with(|s| s.replace(sync)));
    f()
}

/// The synchronisation this thread's training-mode BatchNorms run under, if any.
pub fn sync_batch_norm() -> Option<SyncBatchNorm> {
    SYNC.with(|s| s.borrow().clone())
}

/// What a synchronised training BatchNorm gives: the output, and the global batch's mean,
/// biased variance and number of values per channel (for the running statistics).
#[derive(Debug)]
pub struct SyncedNorm {
    pub y: Tensor,
    pub mean: Tensor,
    pub var: Tensor,
    pub count: f64,
}

/// Training-mode BatchNorm of the N×C×H×W shard `x` with the statistics of every rank's shard
/// together (then ReLU if `relu`). Each rank takes its shard's count, mean and sum of squared
/// deviations per channel (two passes: no cancellation), the ranks gather them (a sum of
/// buffers in which each fills its own row), and each combines them exactly (Chan et al.), as
/// PyTorch's SyncBatchNorm does. Gradients reach x, γ and β on this rank and, through the
/// gathering's backward, the other ranks' shards.
pub fn batch_norm_train_sync(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
    sync: &SyncBatchNorm,
) -> candle_core::Result<SyncedNorm> {
    let (n, c, h, w) = x.dims4()?;
    let (dtype, dev) = (x.dtype(), x.device());
    let (world, rank) = (sync.reduce.world(), sync.reduce.rank());
    if rank >= world {
        candle_core::bail!("batch norm: rank {rank} of {world}")
    }
    let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1));
    // The arithmetic runs in f64 on the CPU, whose reductions sum one value after another (in f32
    // their rounding grows with the values per channel, as the fused kernel's does not); CUDA's
    // reductions are trees, accurate in f32.
    let acc = if dev.is_cpu() { DType::F64 } else { DType::F32 };
    let xa = x.to_dtype(acc)?;
    let local_mean = xa.mean_keepdim((0, 2, 3))?;
    let m2 = xa.broadcast_sub(&local_mean)?.sqr()?.sum((0, 2, 3))?;
    let row = Tensor::cat(
        &[
            Tensor::new(&[(n * h * w) as f32], dev)?,
            local_mean.flatten_all()?.to_dtype(DType::F32)?,
            m2.to_dtype(DType::F32)?,
        ],
        0,
    )?;
    // A stand-in's row is zeroed by a product with a tensor, not a scalar: candle's backward
    // drops the inputs of a product with the scalar 0, and every rank must meet the others in
    // the backward's reduction too.
    let weight = Tensor::new(if sync.counts { 1f32 } else { 0. }, dev)?;
    let row = row.broadcast_mul(&weight)?;
    let width = 2 * c + 1;
    let mut rows = Vec::with_capacity(3);
    if rank > 0 {
        rows.push(Tensor::zeros(rank * width, DType::F32, dev)?);
    }
    rows.push(row);
    if rank + 1 < world {
        rows.push(Tensor::zeros((world - rank - 1) * width, DType::F32, dev)?);
    }
    let gathered = all_reduce(&Tensor::cat(&rows, 0)?, &sync.reduce)?
        .reshape((world, width))?
        .to_dtype(acc)?;
    let counts = gathered.narrow(1, 0, 1)?;
    let total = counts.sum_all()?.to_dtype(DType::F64)?.to_vec0::<f64>()?;
    if total < 2.0 {
        candle_core::bail!(
            "batch norm: training needs more than one value per channel, got {total} over every \
             rank's images"
        )
    }
    let means = gathered.narrow(1, 1, c)?;
    let mean = (counts.broadcast_mul(&means)?.sum_keepdim(0)? / total)?;
    let spread = counts.broadcast_mul(&means.broadcast_sub(&mean)?.sqr()?)?;
    let var = ((gathered.narrow(1, c + 1, c)?.sum_keepdim(0)? + spread.sum_keepdim(0)?)? / total)?
        .flatten_all()?;
    let mean = mean.flatten_all()?;
    let scale = (gamma.to_dtype(acc)? * (var.clone() + eps)?.sqrt()?.recip()?)?;
    let bias = (beta.to_dtype(acc)? - (&mean * &scale)?)?;
    let y = xa
        .broadcast_mul(&per_channel(&scale)?)?
        .broadcast_add(&per_channel(&bias)?)?;
    let y = if relu { y.relu()? } else { y };
    Ok(SyncedNorm {
        y: y.to_dtype(dtype)?,
        mean: mean.detach().to_dtype(gamma.dtype())?,
        var: var.detach().to_dtype(gamma.dtype())?,
        count: total,
    })
}

/// The sum of `t` (a vector) over the ranks, as a differentiable op: its backward is the sum of
/// the ranks' gradients (each rank's loss depends on every rank's contribution).
fn all_reduce(t: &Tensor, reduce: &Arc<dyn StatsReduce>) -> candle_core::Result<Tensor> {
    let dev = t.device().clone();
    let host = t.to_device(&Device::Cpu)?.contiguous()?;
    let op = AllReduceSum {
        reduce: Arc::clone(reduce),
    };
    host.apply_op1_arc(Arc::new(Box::new(op)))?.to_device(&dev)
}

struct AllReduceSum {
    reduce: Arc<dyn StatsReduce>,
}

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "mura-all-reduce-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("all-reduce: expects f32 values")
        };
        let Some((from, to)) = l.contiguous_offsets() else {
            candle_core::bail!("all-reduce: expects a contiguous tensor")
        };
        let mut data = v[from..to].to_vec();
        self.reduce.sum(&mut data)?;
        Ok((CpuStorage::F32(data), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let mut g = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.reduce.sum(&mut g)?;
        Ok(Some(Tensor::from_vec(g, grad.shape(), grad.device())?))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Barrier, Mutex};

    use super::*;
    use crate::norm::tests::{close, flat as v};
    use crate::testing::uniform;

    /// Ranks as threads of a test, summing in rank order through a shared table.
    struct Table {
        world: usize,
        slots: Mutex<Vec<Vec<f32>>>,
        barrier: Barrier,
    }

    struct Seat(Arc<Table>, usize);

    impl StatsReduce for Seat {
        fn world(&self) -> usize {
            self.0.world
        }

        fn rank(&self) -> usize {
            self.1
        }

        fn sum(&self, data: &mut [f32]) -> candle_core::Result<()> {
            let Seat(table, rank) = self;
            table.slots.lock().unwrap()[*rank] = data.to_vec();
            table.barrier.wait();
            let slots = table.slots.lock().unwrap().clone();
            for (i, v) in data.iter_mut().enumerate() {
                *v = (0..table.world).map(|r| slots[r][i]).sum();
            }
            table.barrier.wait();
            Ok(())
        }
    }

    fn table(world: usize) -> Arc<Table> {
        Arc::new(Table {
            world,
            slots: Mutex::new(vec![Vec::new(); world]),
            barrier: Barrier::new(world),
        })
    }

    fn alone() -> Arc<dyn StatsReduce> {
        Arc::new(Seat(table(1), 0))
    }

    /// Output, statistics and the gradients of x, γ and β of 2 ranks (shards of 3 and 1 images)
    /// and of 3 ranks (one idle) against the whole batch in one BatchNorm (f32, 1e-5 relative).
    #[test]
    fn shards_normalise_and_differentiate_as_the_whole_batch() {
        let (n, c, h, w) = (4, 3, 5, 2);
        let dev = Device::Cpu;
        let xv: Vec<f32> = uniform(n * c * h * w, 1, -2.0, 3.0)
            .iter()
            .map(|x| x + 40.0)
            .collect();
        let dyv = uniform(n * c * h * w, 2, -1.0, 1.0);
        let (gv, bv) = (uniform(c, 3, 0.5, 1.5), uniform(c, 4, -0.5, 0.5));
        // Per image: (y, dx); then (mean, var, dγ, dβ) of the whole batch.
        let run = |x: Vec<f32>, dy: Vec<f32>, k: usize, sync: Option<SyncBatchNorm>| {
            let x = candle_core::Var::from_vec(x, (k.max(1), c, h, w), &dev).unwrap();
            let g = candle_core::Var::from_vec(gv.clone(), c, &dev).unwrap();
            let b = candle_core::Var::from_vec(bv.clone(), c, &dev).unwrap();
            let dy = Tensor::from_vec(dy, (k.max(1), c, h, w), &dev).unwrap();
            // No assertion before the backward: a rank that stopped would leave the others
            // waiting in its reduction.
            let (y, mean, var, count) = match &sync {
                Some(s) => {
                    let out = batch_norm_train_sync(&x, &g, &b, 1e-3, true, s).unwrap();
                    (out.y, out.mean, out.var, out.count)
                }
                None => {
                    let (y, m, v) = crate::batch_norm_train(&x, &g, &b, 1e-3, true).unwrap();
                    (y, m, v, (n * h * w) as f64)
                }
            };
            let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(&x).map(v).unwrap_or_default();
            let dg = v(grads.get(&g).unwrap());
            let db = v(grads.get(&b).unwrap());
            assert_eq!(count, (n * h * w) as f64);
            (v(&y), dx, v(&mean), v(&var), dg, db)
        };
        let whole = run(xv.clone(), dyv.clone(), n, None);
        for sizes in [vec![3usize, 1], vec![2, 0, 2]] {
            let world = sizes.len();
            let group = table(world);
            let outs: Vec<_> = std::thread::scope(|s| {
                let mut at = 0;
                let handles: Vec<_> = sizes
                    .iter()
                    .enumerate()
                    .map(|(rank, &k)| {
                        let image = c * h * w;
                        let (xs, dys) = if k == 0 {
                            (vec![0.0; image], vec![0.0; image])
                        } else {
                            (
                                xv[at * image..(at + k) * image].to_vec(),
                                dyv[at * image..(at + k) * image].to_vec(),
                            )
                        };
                        at += k;
                        let reduce: Arc<dyn StatsReduce> = Arc::new(Seat(group.clone(), rank));
                        let run = &run;
                        s.spawn(move || {
                            let sync = SyncBatchNorm::new(reduce, k > 0);
                            (k, run(xs, dys, k, Some(sync)))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let what = format!("shards {sizes:?}");
            let (mut y, mut dx) = (Vec::new(), Vec::new());
            let (mut dg, mut db) = (vec![0f32; c], vec![0f32; c]);
            for (k, out) in &outs {
                close(&out.2, &whole.2, 1e-5, &format!("{what} mean"));
                close(&out.3, &whole.3, 1e-4, &format!("{what} var"));
                if *k == 0 {
                    assert!(out.4.iter().chain(&out.5).all(|g| *g == 0.0), "{what}");
                    continue;
                }
                y.extend_from_slice(&out.0);
                dx.extend_from_slice(&out.1);
                dg.iter_mut().zip(&out.4).for_each(|(a, b)| *a += b);
                db.iter_mut().zip(&out.5).for_each(|(a, b)| *a += b);
            }
            close(&y, &whole.0, 1e-5, &format!("{what} y"));
            close(&dx, &whole.1, 1e-4, &format!("{what} dx"));
            close(&dg, &whole.4, 1e-4, &format!("{what} dγ"));
            close(&db, &whole.5, 1e-5, &format!("{what} dβ"));
        }
    }

    #[test]
    fn the_setting_is_per_thread_and_restored() {
        assert!(sync_batch_norm().is_none());
        let reduce = alone();
        with_sync_batch_norm(Some(SyncBatchNorm::new(reduce, true)), || {
            assert!(sync_batch_norm().is_some());
            std::thread::spawn(|| assert!(sync_batch_norm().is_none()))
                .join()
                .unwrap();
            with_sync_batch_norm(None, || assert!(sync_batch_norm().is_none()));
            assert!(sync_batch_norm().is_some());
        });
        assert!(sync_batch_norm().is_none());
    }

    /// One rank alone with a single value per channel is refused, as the unsynchronised op.
    #[test]
    fn one_value_over_every_rank_is_refused() {
        let dev = Device::Cpu;
        let reduce = alone();
        let x = Tensor::ones((1, 2, 1, 1), DType::F32, &dev).unwrap();
        let g = Tensor::ones(2, DType::F32, &dev).unwrap();
        let sync = SyncBatchNorm::new(reduce, true);
        let err = batch_norm_train_sync(&x, &g, &g, 1e-5, false, &sync).unwrap_err();
        assert!(err.to_string().contains("more than one value"), "{err}");
    }
}
