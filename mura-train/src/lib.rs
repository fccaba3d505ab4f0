#![doc = include_str!("../README.md")]

pub mod policy;

pub use policy::{
    EarlyStopping, EarlyStoppingConfig, Mode, Monitor, Plateau, PlateauConfig, PolicyError,
    StopDecision,
};
