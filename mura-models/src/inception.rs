//! Inception-v3 with timm's names (`Conv2d_1a_3x3.conv`, `Mixed_5b.branch5x5_1.bn`), BatchNorm eps
//! 0.001, the asymmetric 1×7/7×1 and 1×3/3×1 kernels, and the five block kinds (A–E), each public so
//! it can be tested alone. The auxiliary classifier is not built: a checkpoint's `AuxLogits.*`
//! tensors are accepted and ignored when loading.

use candle_core::{ModuleT, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{ConvBnAct, ConvConfig, conv_bn_act};
use mura_kernels::{Pool2d, PoolKind};

/// BatchNorm epsilon of Inception-v3 (timm's `norm_eps`).
pub const EPS: f64 = 1e-3;

fn cba(
    c_in: usize,
    c_out: usize,
    cfg: ConvConfig,
    vb: &VarBuilder<'_>,
    name: &str,
) -> candle_core::Result<ConvBnAct> {
    conv_bn_act(c_in, c_out, cfg, EPS, vb.pp(name))
}

fn k(n: usize) -> ConvConfig {
    ConvConfig::k(n)
}

fn k1x7() -> ConvConfig {
    ConvConfig::default().kernel_hw(1, 7).pad_hw(0, 3)
}

fn k7x1() -> ConvConfig {
    ConvConfig::default().kernel_hw(7, 1).pad_hw(3, 0)
}

fn k1x3() -> ConvConfig {
    ConvConfig::default().kernel_hw(1, 3).pad_hw(0, 1)
}

fn k3x1() -> ConvConfig {
    ConvConfig::default().kernel_hw(3, 1).pad_hw(1, 0)
}

/// The 3×3/1 average pool (padding counted, PyTorch's default) of the A, C and E pool branches.
pub(crate) fn branch_avg_pool() -> Pool2d {
    Pool2d {
        kind: PoolKind::Avg {
            count_include_pad: true,
        },
        ..Pool2d::avg(3, 1, 1)
    }
}

fn branch_avg(x: &Tensor) -> candle_core::Result<Tensor> {
    branch_avg_pool().forward(x)
}

fn chain(x: &Tensor, convs: &[&ConvBnAct], train: bool) -> candle_core::Result<Tensor> {
    let mut y = x.clone();
    for c in convs {
        y = c.forward_t(&y, train)?;
    }
    Ok(y)
}

/// Inception-A (35×35 grid): 1×1, 5×5, double 3×3 and pool branches.
#[derive(Debug, Clone)]
pub struct InceptionA {
    pub(crate) branch1x1: ConvBnAct,
    pub(crate) branch5x5_1: ConvBnAct,
    pub(crate) branch5x5_2: ConvBnAct,
    pub(crate) branch3x3dbl_1: ConvBnAct,
    pub(crate) branch3x3dbl_2: ConvBnAct,
    pub(crate) branch3x3dbl_3: ConvBnAct,
    pub(crate) branch_pool: ConvBnAct,
}

impl InceptionA {
    /// Every convolution of the block.
    fn convs_mut(&mut self) -> Vec<&mut ConvBnAct> {
        vec![
            &mut self.branch1x1,
            &mut self.branch5x5_1,
            &mut self.branch5x5_2,
            &mut self.branch3x3dbl_1,
            &mut self.branch3x3dbl_2,
            &mut self.branch3x3dbl_3,
            &mut self.branch_pool,
        ]
    }

    pub fn new(c_in: usize, pool_features: usize, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(Self {
            branch1x1: cba(c_in, 64, k(1), &vb, "branch1x1")?,
            branch5x5_1: cba(c_in, 48, k(1), &vb, "branch5x5_1")?,
            branch5x5_2: cba(48, 64, k(5).pad(2), &vb, "branch5x5_2")?,
            branch3x3dbl_1: cba(c_in, 64, k(1), &vb, "branch3x3dbl_1")?,
            branch3x3dbl_2: cba(64, 96, k(3).pad(1), &vb, "branch3x3dbl_2")?,
            branch3x3dbl_3: cba(96, 96, k(3).pad(1), &vb, "branch3x3dbl_3")?,
            branch_pool: cba(c_in, pool_features, k(1), &vb, "branch_pool")?,
        })
    }

    pub fn out_channels(pool_features: usize) -> usize {
        64 + 64 + 96 + pool_features
    }
}

impl ModuleT for InceptionA {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let b1 = self.branch1x1.forward_t(x, train)?;
        let b5 = chain(x, &[&self.branch5x5_1, &self.branch5x5_2], train)?;
        let b3 = chain(
            x,
            &[
                &self.branch3x3dbl_1,
                &self.branch3x3dbl_2,
                &self.branch3x3dbl_3,
            ],
            train,
        )?;
        let bp = self.branch_pool.forward_t(&branch_avg(x)?, train)?;
        Tensor::cat(&[b1, b5, b3, bp], 1)
    }
}

/// Inception-B (grid reduction 35 → 17): strided 3×3, double 3×3 and max-pool branches.
#[derive(Debug, Clone)]
pub struct InceptionB {
    pub(crate) branch3x3: ConvBnAct,
    pub(crate) branch3x3dbl_1: ConvBnAct,
    pub(crate) branch3x3dbl_2: ConvBnAct,
    pub(crate) branch3x3dbl_3: ConvBnAct,
}

impl InceptionB {
    /// Every convolution of the block.
    fn convs_mut(&mut self) -> Vec<&mut ConvBnAct> {
        vec![
            &mut self.branch3x3,
            &mut self.branch3x3dbl_1,
            &mut self.branch3x3dbl_2,
            &mut self.branch3x3dbl_3,
        ]
    }

    pub fn new(c_in: usize, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(Self {
            branch3x3: cba(c_in, 384, k(3).stride(2), &vb, "branch3x3")?,
            branch3x3dbl_1: cba(c_in, 64, k(1), &vb, "branch3x3dbl_1")?,
            branch3x3dbl_2: cba(64, 96, k(3).pad(1), &vb, "branch3x3dbl_2")?,
            branch3x3dbl_3: cba(96, 96, k(3).stride(2), &vb, "branch3x3dbl_3")?,
        })
    }

    pub fn out_channels(c_in: usize) -> usize {
        384 + 96 + c_in
    }
}

impl ModuleT for InceptionB {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let b3 = self.branch3x3.forward_t(x, train)?;
        let bd = chain(
            x,
            &[
                &self.branch3x3dbl_1,
                &self.branch3x3dbl_2,
                &self.branch3x3dbl_3,
            ],
            train,
        )?;
        let bp = Pool2d::max(3, 2, 0).forward(x)?;
        Tensor::cat(&[b3, bd, bp], 1)
    }
}

/// Inception-C (17×17 grid): factorised 7×7 convolutions as 1×7 and 7×1 pairs.
#[derive(Debug, Clone)]
pub struct InceptionC {
    pub(crate) branch1x1: ConvBnAct,
    pub(crate) branch7x7: [ConvBnAct; 3],
    pub(crate) branch7x7dbl: [ConvBnAct; 5],
    pub(crate) branch_pool: ConvBnAct,
}

impl InceptionC {
    /// Every convolution of the block.
    fn convs_mut(&mut self) -> Vec<&mut ConvBnAct> {
        let mut v = vec![&mut self.branch1x1, &mut self.branch_pool];
        v.extend(&mut self.branch7x7);
        v.extend(&mut self.branch7x7dbl);
        v
    }

    pub fn new(c_in: usize, c7: usize, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(Self {
            branch1x1: cba(c_in, 192, k(1), &vb, "branch1x1")?,
            branch7x7: [
                cba(c_in, c7, k(1), &vb, "branch7x7_1")?,
                cba(c7, c7, k1x7(), &vb, "branch7x7_2")?,
                cba(c7, 192, k7x1(), &vb, "branch7x7_3")?,
            ],
            branch7x7dbl: [
                cba(c_in, c7, k(1), &vb, "branch7x7dbl_1")?,
                cba(c7, c7, k7x1(), &vb, "branch7x7dbl_2")?,
                cba(c7, c7, k1x7(), &vb, "branch7x7dbl_3")?,
                cba(c7, c7, k7x1(), &vb, "branch7x7dbl_4")?,
                cba(c7, 192, k1x7(), &vb, "branch7x7dbl_5")?,
            ],
            branch_pool: cba(c_in, 192, k(1), &vb, "branch_pool")?,
        })
    }

    pub const OUT_CHANNELS: usize = 768;
}

impl ModuleT for InceptionC {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let b1 = self.branch1x1.forward_t(x, train)?;
        let b7 = chain(x, &self.branch7x7.iter().collect::<Vec<_>>(), train)?;
        let bd = chain(x, &self.branch7x7dbl.iter().collect::<Vec<_>>(), train)?;
        let bp = self.branch_pool.forward_t(&branch_avg(x)?, train)?;
        Tensor::cat(&[b1, b7, bd, bp], 1)
    }
}

/// Inception-D (grid reduction 17 → 8).
#[derive(Debug, Clone)]
pub struct InceptionD {
    pub(crate) branch3x3: [ConvBnAct; 2],
    pub(crate) branch7x7x3: [ConvBnAct; 4],
}

impl InceptionD {
    /// Every convolution of the block.
    fn convs_mut(&mut self) -> Vec<&mut ConvBnAct> {
        self.branch3x3
            .iter_mut()
            .chain(&mut self.branch7x7x3)
            .collect()
    }

    pub fn new(c_in: usize, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(Self {
            branch3x3: [
                cba(c_in, 192, k(1), &vb, "branch3x3_1")?,
                cba(192, 320, k(3).stride(2), &vb, "branch3x3_2")?,
            ],
            branch7x7x3: [
                cba(c_in, 192, k(1), &vb, "branch7x7x3_1")?,
                cba(192, 192, k1x7(), &vb, "branch7x7x3_2")?,
                cba(192, 192, k7x1(), &vb, "branch7x7x3_3")?,
                cba(192, 192, k(3).stride(2), &vb, "branch7x7x3_4")?,
            ],
        })
    }

    pub fn out_channels(c_in: usize) -> usize {
        320 + 192 + c_in
    }
}

impl ModuleT for InceptionD {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let b3 = chain(x, &self.branch3x3.iter().collect::<Vec<_>>(), train)?;
        let b7 = chain(x, &self.branch7x7x3.iter().collect::<Vec<_>>(), train)?;
        let bp = Pool2d::max(3, 2, 0).forward(x)?;
        Tensor::cat(&[b3, b7, bp], 1)
    }
}

/// Inception-E (8×8 grid): 1×3 and 3×1 branches side by side.
#[derive(Debug, Clone)]
pub struct InceptionE {
    pub(crate) branch1x1: ConvBnAct,
    pub(crate) branch3x3_1: ConvBnAct,
    pub(crate) branch3x3_2a: ConvBnAct,
    pub(crate) branch3x3_2b: ConvBnAct,
    pub(crate) branch3x3dbl_1: ConvBnAct,
    pub(crate) branch3x3dbl_2: ConvBnAct,
    pub(crate) branch3x3dbl_3a: ConvBnAct,
    pub(crate) branch3x3dbl_3b: ConvBnAct,
    pub(crate) branch_pool: ConvBnAct,
}

impl InceptionE {
    /// Every convolution of the block.
    fn convs_mut(&mut self) -> Vec<&mut ConvBnAct> {
        vec![
            &mut self.branch1x1,
            &mut self.branch3x3_1,
            &mut self.branch3x3_2a,
            &mut self.branch3x3_2b,
            &mut self.branch3x3dbl_1,
            &mut self.branch3x3dbl_2,
            &mut self.branch3x3dbl_3a,
            &mut self.branch3x3dbl_3b,
            &mut self.branch_pool,
        ]
    }

    pub fn new(c_in: usize, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(Self {
            branch1x1: cba(c_in, 320, k(1), &vb, "branch1x1")?,
            branch3x3_1: cba(c_in, 384, k(1), &vb, "branch3x3_1")?,
            branch3x3_2a: cba(384, 384, k1x3(), &vb, "branch3x3_2a")?,
            branch3x3_2b: cba(384, 384, k3x1(), &vb, "branch3x3_2b")?,
            branch3x3dbl_1: cba(c_in, 448, k(1), &vb, "branch3x3dbl_1")?,
            branch3x3dbl_2: cba(448, 384, k(3).pad(1), &vb, "branch3x3dbl_2")?,
            branch3x3dbl_3a: cba(384, 384, k1x3(), &vb, "branch3x3dbl_3a")?,
            branch3x3dbl_3b: cba(384, 384, k3x1(), &vb, "branch3x3dbl_3b")?,
            branch_pool: cba(c_in, 192, k(1), &vb, "branch_pool")?,
        })
    }

    pub const OUT_CHANNELS: usize = 2048;
}

impl ModuleT for InceptionE {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let b1 = self.branch1x1.forward_t(x, train)?;
        let a = self.branch3x3_1.forward_t(x, train)?;
        let b3 = Tensor::cat(
            &[
                self.branch3x3_2a.forward_t(&a, train)?,
                self.branch3x3_2b.forward_t(&a, train)?,
            ],
            1,
        )?;
        let d = chain(x, &[&self.branch3x3dbl_1, &self.branch3x3dbl_2], train)?;
        let bd = Tensor::cat(
            &[
                self.branch3x3dbl_3a.forward_t(&d, train)?,
                self.branch3x3dbl_3b.forward_t(&d, train)?,
            ],
            1,
        )?;
        let bp = self.branch_pool.forward_t(&branch_avg(x)?, train)?;
        Tensor::cat(&[b1, b3, bd, bp], 1)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Stage {
    Conv(ConvBnAct),
    MaxPool,
    A(InceptionA),
    B(InceptionB),
    C(InceptionC),
    D(InceptionD),
    E(InceptionE),
}

/// The Inception-v3 backbone (features only): 2048 channels at 8×8 for a 299×299 input.
#[derive(Debug, Clone)]
pub struct InceptionV3 {
    pub(crate) stages: Vec<(String, Stage)>,
}

impl InceptionV3 {
    pub const NUM_FEATURES: usize = 2048;
    /// The smallest input side the strides and valid convolutions allow.
    pub const MIN_INPUT: usize = 75;

    pub fn new(in_channels: usize, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        let s = |name: &str, stage: Stage| (name.to_string(), stage);
        let stages = vec![
            s(
                "Conv2d_1a_3x3",
                Stage::Conv(cba(in_channels, 32, k(3).stride(2), &vb, "Conv2d_1a_3x3")?),
            ),
            s(
                "Conv2d_2a_3x3",
                Stage::Conv(cba(32, 32, k(3), &vb, "Conv2d_2a_3x3")?),
            ),
            s(
                "Conv2d_2b_3x3",
                Stage::Conv(cba(32, 64, k(3).pad(1), &vb, "Conv2d_2b_3x3")?),
            ),
            s("Pool1", Stage::MaxPool),
            s(
                "Conv2d_3b_1x1",
                Stage::Conv(cba(64, 80, k(1), &vb, "Conv2d_3b_1x1")?),
            ),
            s(
                "Conv2d_4a_3x3",
                Stage::Conv(cba(80, 192, k(3), &vb, "Conv2d_4a_3x3")?),
            ),
            s("Pool2", Stage::MaxPool),
            s(
                "Mixed_5b",
                Stage::A(InceptionA::new(192, 32, vb.pp("Mixed_5b"))?),
            ),
            s(
                "Mixed_5c",
                Stage::A(InceptionA::new(256, 64, vb.pp("Mixed_5c"))?),
            ),
            s(
                "Mixed_5d",
                Stage::A(InceptionA::new(288, 64, vb.pp("Mixed_5d"))?),
            ),
            s(
                "Mixed_6a",
                Stage::B(InceptionB::new(288, vb.pp("Mixed_6a"))?),
            ),
            s(
                "Mixed_6b",
                Stage::C(InceptionC::new(768, 128, vb.pp("Mixed_6b"))?),
            ),
            s(
                "Mixed_6c",
                Stage::C(InceptionC::new(768, 160, vb.pp("Mixed_6c"))?),
            ),
            s(
                "Mixed_6d",
                Stage::C(InceptionC::new(768, 160, vb.pp("Mixed_6d"))?),
            ),
            s(
                "Mixed_6e",
                Stage::C(InceptionC::new(768, 192, vb.pp("Mixed_6e"))?),
            ),
            s(
                "Mixed_7a",
                Stage::D(InceptionD::new(768, vb.pp("Mixed_7a"))?),
            ),
            s(
                "Mixed_7b",
                Stage::E(InceptionE::new(1280, vb.pp("Mixed_7b"))?),
            ),
            s(
                "Mixed_7c",
                Stage::E(InceptionE::new(2048, vb.pp("Mixed_7c"))?),
            ),
        ];
        Ok(Self { stages })
    }

    /// Folds every BatchNorm, with its ReLU, into the convolution before it (inference only;
    /// see [`crate::layers::BatchNorm::fold_into`]): Inception-v3 is conv → BN → ReLU throughout.
    pub fn fold_batch_norms(&mut self) -> candle_core::Result<()> {
        for (_, stage) in &mut self.stages {
            let convs = match stage {
                Stage::Conv(c) => vec![c],
                Stage::MaxPool => vec![],
                Stage::A(b) => b.convs_mut(),
                Stage::B(b) => b.convs_mut(),
                Stage::C(b) => b.convs_mut(),
                Stage::D(b) => b.convs_mut(),
                Stage::E(b) => b.convs_mut(),
            };
            convs.into_iter().try_for_each(ConvBnAct::fold)?;
        }
        Ok(())
    }

    pub fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn stage_prefixes(&self, i: usize) -> Vec<String> {
        match self.stages.get(i) {
            Some((_, Stage::MaxPool)) | None => vec![],
            Some((name, _)) => vec![format!("{name}.")],
        }
    }

    pub fn num_stages(&self) -> usize {
        self.stages.len()
    }

    pub fn forward_stage(&self, i: usize, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let Some((_, stage)) = self.stages.get(i) else {
            candle_core::bail!("Inception-v3 has no stage {i}")
        };
        match stage {
            Stage::Conv(c) => c.forward_t(x, train),
            Stage::MaxPool => Pool2d::max(3, 2, 0).forward(x),
            Stage::A(b) => b.forward_t(x, train),
            Stage::B(b) => b.forward_t(x, train),
            Stage::C(b) => b.forward_t(x, train),
            Stage::D(b) => b.forward_t(x, train),
            Stage::E(b) => b.forward_t(x, train),
        }
    }
}
