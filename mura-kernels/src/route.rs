//! Which kernels run: the CPU kernels of this crate for f32 tensors in CPU memory, the generic
//! paths built from candle's tensor ops everywhere else (other dtypes, CUDA), and the generic
//! paths on the CPU too when `MURA_KERNELS=generic` asks for them (to check them, or to compare).
//! Every public op of the crate decides here, and only here.

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

/// The environment variable that forces the generic paths: `MURA_KERNELS=generic`.
pub const KERNELS_ENV: &str = "MURA_KERNELS";

/// The kernels an op runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernels {
    /// This crate's CPU kernels (custom ops).
    Cpu,
    /// Candle's tensor ops on the CPU.
    Generic,
    /// Candle's tensor ops on a CUDA device.
    Cuda,
}

impl Kernels {
    /// `cpu`, `generic` or `cuda`.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Cpu => "cpu",
            Kernels::Generic => "generic",
            Kernels::Cuda => "cuda",
        }
    }

    /// The kernels for tensors of `dtype` on `device`.
    pub fn for_device(device: &Device, dtype: DType) -> Kernels {
        if device.is_cuda() {
            Kernels::Cuda
        } else if dtype == DType::F32 && device.is_cpu() && !generic_forced() {
            Kernels::Cpu
        } else {
            Kernels::Generic
        }
    }

    /// The kernels for `t`.
    pub fn of(t: &Tensor) -> Kernels {
        Kernels::for_device(t.device(), t.dtype())
    }
}

/// Whether `t` (and the tensors it meets in an op) take this crate's CPU kernels.
pub(crate) fn fast(t: &Tensor) -> bool {
    Kernels::of(t) == Kernels::Cpu
}

thread_local! {
    static FORCED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether the generic paths are forced on the CPU: by [`with_generic`] on this thread, else by
/// `MURA_KERNELS=generic` (read once).
pub fn generic_forced() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    FORCED.with(Cell::get).unwrap_or_else(|| {
        *ENV.get_or_init(|| std::env::var(KERNELS_ENV).is_ok_and(|v| v == "generic"))
    })
}

/// Runs `f` with the generic paths forced (`true`) or not (`false`) on this thread, whatever
/// the environment says: how a test runs the same model both ways in one process. Ops decide on
/// the thread that calls them, and so does candle's backward.
pub fn with_generic<R>(forced: bool, f: impl FnOnce() -> R) -> R {
    let before = FORCED.with(|c| c.replace(Some(forced)));
    let out = f();
    FORCED.with(|c| c.set(before));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_on_the_cpu_takes_the_cpu_kernels_unless_forced() {
        let dev = Device::Cpu;
        with_generic(false, || {
            assert_eq!(Kernels::for_device(&dev, DType::F32), Kernels::Cpu);
            assert_eq!(Kernels::for_device(&dev, DType::F64), Kernels::Generic);
        });
        with_generic(true, || {
            assert_eq!(Kernels::for_device(&dev, DType::F32), Kernels::Generic);
            with_generic(false, || {
                assert_eq!(Kernels::for_device(&dev, DType::F32), Kernels::Cpu)
            });
            assert!(generic_forced(), "the outer setting comes back");
        });
        assert_eq!(Kernels::Generic.name(), "generic");
    }
}
