//! Training-mode BatchNorm under data-parallel synchronisation, as a model meets it: a DenseNet
//! (whose blocks then concatenate instead of sharing one buffer) and a ResNet run by one rank
//! alone give what the fused BatchNorm gives — outputs, the input gradient and the running
//! statistics, within 1e-4 relative (the synchronised path sums in f64, the fused kernel too, in
//! other orders).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mura_kernels::{StatsReduce, SyncBatchNorm, with_sync_batch_norm};
use mura_models::layers::Noise;
use mura_models::{
    BlockKind, DenseNet, DenseNetConfig, GlobalPool, Head, HeadConfig, ResNet, ResNetConfig,
};

use crate::common::{det_tensor, fill_deterministic, max_rel_diff};

/// The one rank of a world of one, counting the reductions it is asked for.
#[derive(Default)]
struct Alone(AtomicUsize);

impl StatsReduce for Alone {
    fn world(&self) -> usize {
        1
    }

    fn rank(&self) -> usize {
        0
    }

    fn sum(&self, _data: &mut [f32]) -> candle_core::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

enum Net {
    Dense(DenseNet),
    Res(ResNet),
}

/// Logits, the input gradient and every running statistic after one training forward, and the
/// reductions the rank was asked for.
type Trained = (Tensor, Tensor, Vec<(String, Tensor)>, usize);

fn train_once(dense: bool, synced: bool) -> Trained {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let net = if dense {
        let cfg = DenseNetConfig {
            growth: 4,
            blocks: vec![2, 2],
            bn_size: 2,
        };
        Net::Dense(DenseNet::new(&cfg, 3, vb.clone()).unwrap())
    } else {
        let cfg = ResNetConfig {
            block: BlockKind::Basic,
            layers: vec![1, 1],
            channels: vec![8, 16],
        };
        Net::Res(ResNet::new(&cfg, 3, vb.clone()).unwrap())
    };
    let (stages, features) = match &net {
        Net::Dense(d) => (d.num_stages(), d.num_features()),
        Net::Res(r) => (r.num_stages(), r.num_features()),
    };
    let head = Head::new(
        &HeadConfig::default(),
        GlobalPool::Avg,
        features,
        1,
        "fc",
        vb,
    )
    .unwrap();
    fill_deterministic(&varmap, 3);
    let x = Var::from_tensor(&det_tensor(&[3, 3, 32, 32], 4, &dev)).unwrap();
    let forward = || {
        let mut y = x.as_tensor().clone();
        for i in 0..stages {
            y = match &net {
                Net::Dense(d) => d.forward_stage(i, &y, true).unwrap(),
                Net::Res(r) => r.forward_stage(i, &y, true).unwrap(),
            };
        }
        let logits = head.forward(&y, &Noise::default(), true).unwrap();
        let dx = logits.sum_all().unwrap().backward().unwrap();
        (logits, dx.get(x.as_tensor()).unwrap().clone())
    };
    let alone = Arc::new(Alone::default());
    let (logits, dx) = if synced {
        let sync = SyncBatchNorm::new(alone.clone(), true);
        with_sync_batch_norm(Some(sync), forward)
    } else {
        forward()
    };
    let data = varmap.data().lock().unwrap();
    let mut stats: Vec<(String, Tensor)> = data
        .iter()
        .filter(|(n, _)| n.contains("running_"))
        .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    stats.sort_by(|a, b| a.0.cmp(&b.0));
    (logits, dx, stats, alone.0.load(Ordering::Relaxed))
}

#[test]
fn a_synchronised_rank_alone_trains_as_the_fused_batch_norm() {
    mura_kernels::with_generic(false, || {
        for dense in [true, false] {
            let what = if dense { "densenet" } else { "resnet" };
            let (l0, dx0, s0, none) = train_once(dense, false);
            let (l1, dx1, s1, reductions) = train_once(dense, true);
            // One reduction per BatchNorm in the forward and one in the backward.
            assert_eq!((none, reductions), (0, s0.len()), "{what}");
            assert!(max_rel_diff(&l1, &l0) <= 1e-4, "{what} logits");
            assert!(max_rel_diff(&dx1, &dx0) <= 1e-4, "{what} input gradient");
            assert_eq!(s0.len(), s1.len());
            assert!(!s0.is_empty());
            for ((n, a), (_, b)) in s1.iter().zip(&s0) {
                assert!(max_rel_diff(a, b) <= 1e-4, "{what} {n}");
            }
        }
    })
}
