//! Runs the element loops of the kernels compiled for AVX2 where the CPU has it. The crate is
//! built for baseline x86-64 (SSE2: four f32 lanes), so without this every loop the compiler
//! vectorises stays four lanes wide; the GEMM dispatches on its own.
//!
//! Results do not change with the path taken: the loops fix their own summation order (explicit
//! lanes), and Rust never contracts `a * b + c` into a fused multiply-add on its own, so the
//! AVX2 build computes the same operations, only more at a time.

/// `f()`, compiled for AVX2 and FMA when the CPU has both: `f` is inlined into a function built
/// with those features (a closure passed once is inlined into its only caller), so the loops in
/// it are vectorised eight lanes wide. Call it around the loop over one plane or row, inside
/// any rayon closure (work run on another thread is compiled apart).
#[inline(always)]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2() {
            // SAFETY: the CPU has AVX2 and FMA (`avx2` checked both), the only requirement of a
            // function built with them.
            #[allow(unsafe_code)]
            return unsafe { x86::with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// `f()` built for AVX2 and FMA: calling it is `unsafe` where the CPU may lack them.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same lanes summed both ways give the same bits (the order is the code's, not the
    /// instruction set's).
    #[test]
    fn both_paths_give_the_same_bits() {
        let v: Vec<f32> = (0..1003)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.37)
            .collect();
        let sum = |v: &[f32]| {
            let mut lanes = [0f32; 8];
            let mut it = v.chunks_exact(8);
            for c in &mut it {
                for k in 0..8 {
                    lanes[k] += c[k] * c[k] + 0.5 * c[k];
                }
            }
            lanes.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
        };
        let wide = vectorised(
            #[inline(always)]
            || sum(&v),
        );
        assert_eq!(wide.to_bits(), sum(&v).to_bits());
    }
}
