//! What the zoo's layers, initialisation and checkpoints share at the bottom: the variables of
//! a `VarMap`, and a counter-based generator for seeded random bits.

use std::collections::HashMap;
use std::sync::MutexGuard;

use candle_core::Var;
use candle_nn::VarMap;

/// The variables of a `VarMap` (a poisoned lock still holds valid tensors).
pub(crate) fn lock_vars(varmap: &VarMap) -> MutexGuard<'_, HashMap<String, Var>> {
    match varmap.data().lock() {
        Ok(d) => d,
        Err(p) => p.into_inner(),
    }
}

/// SplitMix64: the counter-based generator behind dropout's noise and seeded initialisation.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform value in [0, 1) from 24 random bits (exact in f32).
pub(crate) fn unit(bits: u64) -> f32 {
    (bits >> 40) as f32 / (1u64 << 24) as f32
}
