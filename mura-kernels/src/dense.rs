//! DenseNet's dense block in training with one feature buffer: each layer's input is the first
//! channels of the buffer, read in place, and its new channels are written once after them; the
//! backward adds every layer's input gradient into one gradient buffer.
//!
//! The concatenating block (mura-models' `dense_block_concat`) copies all the features gathered
//! so far into a fresh input for every layer (quadratic in the depth), keeps each of those copies
//! for the backward, and its backward narrows the gradient of each copy into pieces and adds them
//! up piece by piece.
//!
//! candle's custom ops return fresh storage, so the buffer cannot be a tensor that each
//! layer's input views. It lives in a [`State`] the block's ops share instead, and what the
//! graph carries between them is a one-element *token* standing for "the features so far":
//!
//! - `Start(x) → token₀` copies the block input into the buffer;
//! - `Norm(tokenⱼ, γ, β) → ReLU(BN(features[:, ..cⱼ]))` is layer j's first BatchNorm, reading
//!   the buffer in place;
//! - `Append(tokenⱼ, yⱼ) → tokenⱼ₊₁` writes layer j's new channels;
//! - `Finish(token_L) → features`, the block's output, a copy of the buffer.
//!
//! Backward, candle visits a tensor only after every op that consumed it, so: `Finish` runs
//! first and starts the gradient buffer G from the output's gradient; each `Norm` adds its
//! input gradient into G's first cⱼ channels; when `Append`ⱼ runs, every layer that read
//! layer j's channels has added its part, and G's channels cⱼ..cⱼ₊₁ are yⱼ's whole gradient;
//! `Start` hands G's first channels to x. The tokens carry one-element zero gradients, so
//! that candle visits them.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use super::norm::{DxPlane, Grads, Stats, train_centres, train_forward};
use super::{Images, f32_slice};

/// The buffers a block's ops share.
struct State {
    /// Images in the buffers (N).
    n: usize,
    /// Map height and width.
    h: usize,
    w: usize,
    /// H·W.
    hw: usize,
    /// The block's output channels: the input's and every layer's.
    total: usize,
    /// N images of `total` channels, image-major; the first `filled` channels are written.
    features: RwLock<Features>,
    /// The gradient of the features, from `Finish`'s backward on.
    grad: Mutex<Option<Vec<f32>>>,
}

struct Features {
    data: Vec<f32>,
    filled: usize,
}

impl State {
    fn features(&self) -> candle_core::Result<RwLockReadGuard<'_, Features>> {
        self.features.read().map_err(|_| {
            candle_core::Error::Msg("dense block: the feature buffer is poisoned".into())
        })
    }

    fn features_mut(&self) -> candle_core::Result<RwLockWriteGuard<'_, Features>> {
        self.features.write().map_err(|_| {
            candle_core::Error::Msg("dense block: the feature buffer is poisoned".into())
        })
    }

    fn grad(&self) -> candle_core::Result<MutexGuard<'_, Option<Vec<f32>>>> {
        self.grad.lock().map_err(|_| {
            candle_core::Error::Msg("dense block: the gradient buffer is poisoned".into())
        })
    }

    /// The first `channels` channels of the features, read in place.
    fn images<'a>(&self, f: &'a Features, channels: usize) -> candle_core::Result<Images<'a>> {
        if channels > f.filled {
            candle_core::bail!(
                "dense block: {channels} channels read, {} written so far",
                f.filled
            )
        }
        Ok(Images {
            data: &f.data,
            start: 0,
            stride: self.total * self.hw,
        })
    }

    /// Channels `from..from + count` of the gradient buffer as a fresh N×count×H×W tensor.
    fn grad_channels(
        &self,
        from: usize,
        count: usize,
        like: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let grad = self.grad()?;
        let Some(g) = grad.as_ref() else {
            candle_core::bail!("dense block backward: no gradient reached the block's output")
        };
        let (image, hw) = (self.total * self.hw, self.hw);
        let mut out = Vec::with_capacity(self.n * count * hw);
        for b in 0..self.n {
            out.extend_from_slice(&g[b * image + from * hw..b * image + (from + count) * hw]);
        }
        Tensor::from_vec(out, (self.n, count, self.h, self.w), like.device())
    }
}

/// The one-element stand-in for the features so far.
fn token() -> (CpuStorage, Shape) {
    (CpuStorage::F32(vec![0.0]), Shape::from(1))
}

/// The gradient a token passes on: a zero of its shape.
fn token_grad(t: &Tensor) -> candle_core::Result<Option<Tensor>> {
    Ok(Some(Tensor::zeros(1, DType::F32, t.device())?))
}

/// The features of a dense block being trained (see the module documentation).
pub struct DenseFeatures {
    state: Arc<State>,
    token: Tensor,
}

impl std::fmt::Debug for DenseFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenseFeatures")
            .field("images", &self.state.n)
            .field("channels", &self.state.total)
            .field("size", &(self.state.h, self.state.w))
            .finish_non_exhaustive()
    }
}

impl DenseFeatures {
    /// Starts a block of `total` output channels from its N×C×H×W f32 input on the CPU.
    pub fn start(x: &Tensor, total: usize) -> candle_core::Result<Self> {
        let (n, c, h, w) = x.dims4()?;
        if c > total {
            candle_core::bail!("dense block: input of {c} channels, output of {total}")
        }
        let state = Arc::new(State {
            n,
            h,
            w,
            hw: h * w,
            total,
            features: RwLock::new(Features {
                data: vec![0.0; n * total * h * w],
                filled: 0,
            }),
            grad: Mutex::new(None),
        });
        let token = x.contiguous()?.apply_op1_arc(Arc::new(Box::new(Start {
            state: state.clone(),
        })))?;
        Ok(Self { state, token })
    }

    /// Channels written so far.
    pub fn channels(&self) -> candle_core::Result<usize> {
        Ok(self.state.features()?.filled)
    }

    /// Training-mode BatchNorm (then ReLU if `relu`) of the features so far, read in place:
    /// `(y, batch mean, biased batch variance)` as [`super::batch_norm_train`] gives them.
    pub fn norm_train(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        relu: bool,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let stats = Arc::new(OnceLock::new());
        let op = Norm {
            state: self.state.clone(),
            channels: self.channels()?,
            eps,
            relu,
            stats: stats.clone(),
        };
        let y = self.token.apply_op3_arc(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            Arc::new(Box::new(op)),
        )?;
        let Some(Stats { mean, var }) = stats.get() else {
            candle_core::bail!("dense block: the BatchNorm left no batch statistics")
        };
        let dev = gamma.device();
        Ok((
            y,
            Tensor::new(mean.as_slice(), dev)?,
            Tensor::new(var.as_slice(), dev)?,
        ))
    }

    /// Writes a layer's new channels (N×growth×H×W) after the features so far.
    pub fn append(&mut self, y: &Tensor) -> candle_core::Result<()> {
        let op = Append {
            state: self.state.clone(),
            at: self.channels()?,
        };
        self.token = self
            .token
            .apply_op2_arc(&y.contiguous()?, Arc::new(Box::new(op)))?;
        Ok(())
    }

    /// The block's output: every channel, once all are written.
    pub fn finish(self) -> candle_core::Result<Tensor> {
        self.token
            .apply_op1_arc(Arc::new(Box::new(Finish { state: self.state })))
    }
}

/// x → token₀, x copied into the first channels of the buffer.
struct Start {
    state: Arc<State>,
}

impl CustomOp1 for Start {
    fn name(&self) -> &'static str {
        "mura-dense-start"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "dense block";
        let x = f32_slice(s, l, op)?;
        let st = &self.state;
        let mut f = st.features_mut()?;
        let fits = matches!(*l.dims(), [n, c, h, w]
            if n == st.n && h == st.h && w == st.w && c <= st.total);
        if !fits || f.filled != 0 {
            candle_core::bail!("{op}: input {:?} does not start this block", l.dims())
        }
        let c = l.dims()[1];
        let (image, stride) = (c * st.hw, st.total * st.hw);
        if image > 0 {
            for (dst, src) in f.data.chunks_mut(stride).zip(x.chunks(image)) {
                dst[..image].copy_from_slice(src);
            }
        }
        f.filled = c;
        Ok(token())
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, c, _, _) = x.dims4()?;
        let dx = self.state.grad_channels(0, c, x)?;
        // The block's last use of its gradient buffer.
        *self.state.grad()? = None;
        Ok(Some(dx))
    }
}

/// (tokenⱼ, yⱼ) → tokenⱼ₊₁, yⱼ written at channel `at`.
struct Append {
    state: Arc<State>,
    at: usize,
}

impl CustomOp2 for Append {
    fn name(&self) -> &'static str {
        "mura-dense-append"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        s: &CpuStorage,
        l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "dense block";
        let y = f32_slice(s, l, op)?;
        let st = &self.state;
        let (n, growth, h, w) = match *l.dims() {
            [n, g, h, w] => (n, g, h, w),
            ref d => candle_core::bail!("{op}: a layer's output must be N×C×H×W, got {d:?}"),
        };
        let mut f = st.features_mut()?;
        if n != st.n || h * w != st.hw || f.filled != self.at || self.at + growth > st.total {
            candle_core::bail!(
                "{op}: a layer output {:?} does not fit after {} of {} channels of {}×{} maps",
                l.dims(),
                f.filled,
                st.total,
                st.n,
                st.hw
            )
        }
        let (part, stride) = (growth * st.hw, st.total * st.hw);
        let offset = self.at * st.hw;
        if part > 0 {
            for (dst, src) in f.data.chunks_mut(stride).zip(y.chunks(part)) {
                dst[offset..offset + part].copy_from_slice(src);
            }
        }
        f.filled += growth;
        Ok(token())
    }

    fn bwd(
        &self,
        token: &Tensor,
        y: &Tensor,
        _: &Tensor,
        _: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, growth, _, _) = y.dims4()?;
        let dy = y
            .track_op()
            .then(|| self.state.grad_channels(self.at, growth, y))
            .transpose()?;
        Ok((token_grad(token)?, dy))
    }
}

/// (tokenⱼ, γ, β) → ReLU(BN(features[:, ..channels])) in training mode.
struct Norm {
    state: Arc<State>,
    channels: usize,
    eps: f64,
    relu: bool,
    stats: Arc<OnceLock<Stats>>,
}

impl CustomOp3 for Norm {
    fn name(&self) -> &'static str {
        "mura-dense-batch-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "dense block batch norm";
        let (gamma, beta) = (f32_slice(s2, l2, op)?, f32_slice(s3, l3, op)?);
        let (st, c) = (&self.state, self.channels);
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "{op}: {c} channels but γ {} and β {}",
                gamma.len(),
                beta.len()
            )
        }
        let f = st.features()?;
        let x = st.images(&f, c)?;
        let (y, stats) = train_forward(&x, (st.n, c, st.hw), gamma, beta, self.eps, self.relu)?;
        if self.stats.set(stats).is_err() {
            candle_core::bail!("{op}: the op ran twice")
        }
        Ok((CpuStorage::F32(y), Shape::from((st.n, c, st.h, st.w))))
    }

    fn bwd(
        &self,
        token: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (st, c) = (&self.state, self.channels);
        let Some(Stats { mean, var }) = self.stats.get() else {
            candle_core::bail!("dense block batch norm backward: the forward left no statistics")
        };
        let (ss, centre) = train_centres(
            &gamma.to_vec1::<f32>()?,
            &beta.to_vec1::<f32>()?,
            mean,
            var,
            self.eps,
        );
        let grad = grad.contiguous()?;
        let (dy, _) = grad.storage_and_layout();
        let candle_core::Storage::Cpu(dy) = &*dy else {
            candle_core::bail!("dense block batch norm backward: CPU tensors only")
        };
        let dy = f32_slice(dy, grad.layout(), "dense block batch norm backward")?;
        let f = st.features()?;
        let x = st.images(&f, c)?;
        let mut g = st.grad()?;
        let Some(g) = g.as_mut() else {
            candle_core::bail!("dense block backward: no gradient reached the block's output")
        };
        let hw = st.hw;
        let mut planes: Vec<Vec<DxPlane<'_>>> = (0..c).map(|_| Vec::with_capacity(st.n)).collect();
        if hw > 0 {
            for (p, plane) in g.chunks_mut(hw).enumerate() {
                let ch = p % st.total;
                if ch < c {
                    planes[ch].push(DxPlane::Add(plane));
                }
            }
        }
        let grads = Grads {
            ss: &ss,
            centre: &centre,
            relu: self.relu,
            train: true,
        };
        let sums = grads.channels(&x, dy, (st.n, c, hw), planes);
        let dev = gamma.device();
        let dgamma = Tensor::new(sums.iter().map(|s| s[0] as f32).collect::<Vec<_>>(), dev)?;
        let dbeta = Tensor::new(sums.iter().map(|s| s[1] as f32).collect::<Vec<_>>(), dev)?;
        Ok((token_grad(token)?, Some(dgamma), Some(dbeta)))
    }
}

/// token_L → the features, N×total×H×W.
struct Finish {
    state: Arc<State>,
}

impl CustomOp1 for Finish {
    fn name(&self) -> &'static str {
        "mura-dense-finish"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let st = &self.state;
        let f = st.features()?;
        if f.filled != st.total {
            candle_core::bail!(
                "dense block: finished with {} of its {} channels written",
                f.filled,
                st.total
            )
        }
        Ok((
            CpuStorage::F32(f.data.clone()),
            Shape::from((st.n, st.total, st.h, st.w)),
        ))
    }

    fn bwd(
        &self,
        token: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let st = &self.state;
        if g.len() != st.n * st.total * st.hw {
            candle_core::bail!(
                "dense block backward: a gradient of {} values for {:?}",
                g.len(),
                grad.dims()
            )
        }
        *st.grad()? = Some(g);
        token_grad(token)
    }
}
