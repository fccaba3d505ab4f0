//! Seeded test data shared by the kernels' unit tests.

/// SplitMix64: a well-mixed 64-bit value from `x`.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` values uniform in [`lo`, `hi`) from `seed`, each from 24 random bits.
pub(crate) fn uniform(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let bits = splitmix64(seed ^ (i << 20));
            lo + (hi - lo) * ((bits >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// `n` values uniform in [-1, 1) from `seed`.
pub(crate) fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    uniform(n, seed, -1.0, 1.0)
}
