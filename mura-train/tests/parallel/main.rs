//! Data-parallel training, one binary: the rank step on in-process ranks (`steps`) and whole
//! data-parallel runs (`runs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
#[cfg(feature = "nccl")]
mod nccl;
mod runs;
mod steps;
