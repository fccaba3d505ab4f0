//! Checkpoint and weights loading: any bytes give tensors or a clear error, never a panic or an
//! allocation of a size the file merely claims.

use std::path::Path;

use candle_core::Device;
use mura_models::checkpoint;

pub fn run(bytes: &[u8], scratch: &Path) {
    let _ = checkpoint::parse_safetensors(bytes);
    let path = scratch.join("input.safetensors");
    std::fs::write(&path, bytes).expect("write");
    let _ = checkpoint::read_header(&path);
    let _ = mura_train::state::load(&path, &Device::Cpu);
}
