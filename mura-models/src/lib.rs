#![doc = include_str!("../README.md")]

pub mod pool;

pub use pool::{Pool2d, PoolKind};
