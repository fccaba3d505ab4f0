//! The NCCL all-reduce on this machine's GPUs (one rank per GPU): every rank gets the sum of
//! every rank's tensor, in GPU memory. Built by `tools/cuda-build.sh --check`; run by
//! `tools/gpu-check.sh` on a machine with NVIDIA GPUs.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::CudaContext;
use candle_core::{Device, Tensor};
use mura_train::parallel::{AllReduce, NcclGroup};

#[test]
#[ignore = "needs NVIDIA GPUs and the NCCL library (tools/gpu-check.sh runs it)"]
fn nccl_sums_every_ranks_tensor_on_its_gpu() {
    let gpus = CudaContext::device_count().unwrap() as usize;
    assert!(gpus >= 1, "no GPU");
    let devices: Vec<Device> = (0..gpus).map(|i| Device::new_cuda(i).unwrap()).collect();
    let group: Arc<dyn AllReduce> = Arc::new(NcclGroup::new(&devices).unwrap());
    let n = 1000;
    // Rank r holds r + 1 + i·1e-3 at i: the sum is Σ(r + 1) + world·i·1e-3.
    let sums: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(rank, dev)| {
                let group = Arc::clone(&group);
                s.spawn(move || {
                    let v: Vec<f32> = (0..n)
                        .map(|i| (rank + 1) as f32 + i as f32 * 1e-3)
                        .collect();
                    let t = Tensor::from_vec(v, n, dev).unwrap();
                    let out = group.all_reduce_tensor(rank, &t).unwrap();
                    assert!(out.device().same_device(dev));
                    out.to_vec1::<f32>().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let base = (gpus * (gpus + 1) / 2) as f32;
    for (rank, got) in sums.iter().enumerate() {
        for (i, x) in got.iter().enumerate() {
            let want = base + gpus as f32 * i as f32 * 1e-3;
            assert!(
                (x - want).abs() <= 1e-4 * want,
                "rank {rank} [{i}]: {x} vs {want}"
            );
        }
    }
    // A CPU tensor goes through host memory, as the in-process group's.
    let cpu = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    if gpus == 1 {
        let out = group.all_reduce_tensor(0, &cpu).unwrap();
        assert_eq!(out.to_vec1::<f32>().unwrap(), [1.0, 2.0]);
    }
}
