//! [`NcclGroup`]: the all-reduce of ranks on GPUs of one machine, over NCCL (`nccl` feature).
//! Gradients are summed in GPU memory, GPU to GPU, where [`super::ThreadGroup`] copies them down
//! to the host and back. The small host-side collectives (a synchronised BatchNorm's statistics,
//! broadcasts) and the group's abort stay on a [`ThreadGroup`]; every NCCL reduction is preceded
//! by a meeting there, so a rank that stopped stops the others before they enter NCCL (a rank
//! waiting inside an NCCL kernel could not be woken).

use std::sync::{Mutex, MutexGuard};

use candle_core::cuda_backend::CudaStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, ReduceOp};
use candle_core::{CustomOp1, Device, Layout, Shape, Tensor};

use super::{AllReduce, ThreadGroup};
use crate::TrainError;

/// One rank's NCCL communicator.
struct RankComm(Comm);

// SAFETY: an NCCL communicator may be used from any thread, one call at a time: each sits behind
// its own mutex and only its rank's thread locks it.
#[allow(unsafe_code)]
unsafe impl Send for RankComm {}

/// An all-reduce among ranks on the GPUs of this machine, one rank per GPU, over NCCL.
pub struct NcclGroup {
    host: ThreadGroup,
    comms: Vec<Mutex<RankComm>>,
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclGroup")
            .field("world", &self.comms.len())
            .finish_non_exhaustive()
    }
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> TrainError {
    TrainError::Parallel {
        reason: format!("NCCL {what}: {e:?}"),
    }
}

impl NcclGroup {
    /// A communicator for each of `devices` (rank r on `devices[r]`, every one a GPU), on the
    /// streams their tensors' kernels run on.
    pub fn new(devices: &[Device]) -> Result<Self, TrainError> {
        let streams = devices
            .iter()
            .map(|d| match d {
                Device::Cuda(c) => Ok(c.cuda_stream()),
                other => Err(TrainError::Parallel {
                    reason: format!("NCCL needs every rank on a GPU, got {other:?}"),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let comms = Comm::from_devices(streams).map_err(|e| nccl_error("initialisation", e.0))?;
        Ok(Self {
            host: ThreadGroup::new(devices.len())?,
            comms: comms.into_iter().map(|c| Mutex::new(RankComm(c))).collect(),
        })
    }

    fn comm(&self, rank: usize) -> Result<MutexGuard<'_, RankComm>, TrainError> {
        let slot = self.comms.get(rank).ok_or_else(|| TrainError::Parallel {
            reason: format!("rank {rank} of {}", self.comms.len()),
        })?;
        Ok(match slot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        })
    }
}

impl AllReduce for NcclGroup {
    fn world(&self) -> usize {
        self.comms.len()
    }

    fn all_reduce_sum(&self, rank: usize, data: &mut [f32]) -> Result<(), TrainError> {
        self.host.all_reduce_sum(rank, data)
    }

    fn broadcast(&self, rank: usize, root: usize, data: &mut [f32]) -> Result<(), TrainError> {
        self.host.broadcast(rank, root, data)
    }

    fn abort(&self, reason: &str) {
        self.host.abort(reason)
    }

    fn all_reduce_tensor(&self, rank: usize, t: &Tensor) -> Result<Tensor, TrainError> {
        if !t.device().is_cuda() {
            return super::through_host(self, rank, t);
        }
        // Every rank is here (or the group was aborted) before any enters NCCL.
        self.host.all_reduce_sum(rank, &mut [0.0])?;
        let comm = self.comm(rank)?;
        if let Device::Cuda(d) = t.device()
            && d.cuda_stream().context().ordinal() != comm.0.ordinal()
        {
            return Err(TrainError::Parallel {
                reason: format!(
                    "rank {rank}'s tensor is on GPU {}, its NCCL communicator on GPU {}",
                    d.cuda_stream().context().ordinal(),
                    comm.0.ordinal()
                ),
            });
        }
        Ok(t.to_dtype(candle_core::DType::F32)?
            .contiguous()?
            .apply_op1_no_bwd(&NcclSum(&comm.0))?)
    }
}

/// The sum over the ranks of a contiguous f32 tensor in GPU memory, into a new buffer.
struct NcclSum<'a>(&'a Comm);

impl CustomOp1 for NcclSum<'_> {
    fn name(&self) -> &'static str {
        "mura-nccl-all-reduce"
    }

    fn cpu_fwd(
        &self,
        _s: &candle_core::CpuStorage,
        _l: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce takes tensors in GPU memory")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((from, to)) = l.contiguous_offsets() else {
            candle_core::bail!("the NCCL all-reduce takes a contiguous tensor")
        };
        let dev = s.device.clone();
        let src = s.as_cuda_slice::<f32>()?.slice(from..to);
        // SAFETY: NCCL writes every element of the buffer before anything reads it.
        #[allow(unsafe_code)]
        let mut dst = unsafe { dev.alloc::<f32>(to - from)? };
        self.0
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {:?}", e.0)))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}
