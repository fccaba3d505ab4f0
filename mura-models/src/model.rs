//! One entry point for every network of the zoo: a typed [`ModelConfig`] (architecture, classes,
//! channels, head), the [`Model`] built from it with `forward_features` / `forward_head`, stages
//! for freezing and summaries, and each architecture's [`PretrainedCfg`].

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::ModelError;
use crate::cnn::Cnn;
use crate::config::{
    Arch, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Interpolation, ModelConfig,
    PretrainedCfg, Trainable,
};
use crate::densenet::{DenseNet, DenseNetConfig};
use crate::head::Head;
use crate::inception::InceptionV3;
use crate::layers::{Noise, is_running_stat};
use crate::onnx::graph::{Graph as OnnxGraph, Value as OnnxValue};
use crate::onnx::zoo as onnx_zoo;
use crate::resnet::{ResNet, ResNetConfig};
use crate::vars::lock_vars;

#[derive(Debug, Clone)]
enum Backbone {
    DenseNet(DenseNet),
    ResNet(ResNet),
    Inception(InceptionV3),
}

#[derive(Debug, Clone)]
enum Net {
    Cnn(Box<Cnn>),
    Zoo { backbone: Backbone, head: Head },
}

/// A built network of the zoo. `train` is passed to BatchNorm and dropout; frozen stages run in
/// evaluation mode and are cut from the gradient graph.
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    net: Net,
    frozen_stages: usize,
    noise: Noise,
}

impl Model {
    /// Builds the model with its tensors under `vb` (names as timm's for the zoo backbones).
    pub fn new(config: &ModelConfig, vb: VarBuilder<'_>) -> Result<Self, ModelError> {
        config.check()?;
        let c = config.in_channels;
        let net = if let Some(cnn) = config.cnn_config() {
            Net::Cnn(Box::new(Cnn::new(&cnn, vb)?))
        } else {
            let (backbone, features, classifier) = match config.arch {
                Arch::DenseNet121 | Arch::DenseNet169 | Arch::DenseNet201 => {
                    let cfg = match config.arch {
                        Arch::DenseNet121 => DenseNetConfig::densenet121(),
                        Arch::DenseNet169 => DenseNetConfig::densenet169(),
                        _ => DenseNetConfig::densenet201(),
                    };
                    let d = DenseNet::new(&cfg, c, vb.clone())?;
                    let f = d.num_features();
                    (Backbone::DenseNet(d), f, "classifier")
                }
                Arch::ResNet18 | Arch::ResNet34 | Arch::ResNet50 => {
                    let cfg = match config.arch {
                        Arch::ResNet18 => ResNetConfig::resnet18(),
                        Arch::ResNet34 => ResNetConfig::resnet34(),
                        _ => ResNetConfig::resnet50(),
                    };
                    let r = ResNet::new(&cfg, c, vb.clone())?;
                    let f = r.num_features();
                    (Backbone::ResNet(r), f, "fc")
                }
                _ => (
                    Backbone::Inception(InceptionV3::new(c, vb.clone())?),
                    InceptionV3::NUM_FEATURES,
                    "fc",
                ),
            };
            let pool = config
                .global_pool
                .unwrap_or_else(|| config.head.default_pool());
            let head = Head::new(
                &config.head,
                pool,
                features,
                config.num_classes,
                classifier,
                vb,
            )?;
            Net::Zoo { backbone, head }
        };
        Ok(Self {
            config: config.clone(),
            net,
            frozen_stages: 0,
            noise: Noise::default(),
        })
    }

    /// A model with its tensors in a fresh `VarMap`, initialised from `seed` (see [`crate::init`]).
    pub fn with_seed(
        config: &ModelConfig,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, VarMap), ModelError> {
        let varmap = VarMap::new();
        let model = Self::new(config, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        crate::init::init_seeded(&varmap, seed)?;
        Ok((model, varmap))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn arch(&self) -> Arch {
        self.config.arch
    }

    /// Stage names, input to output; the head is not a stage.
    pub fn stage_names(&self) -> Vec<String> {
        match &self.net {
            Net::Cnn(c) => c.stage_names(),
            Net::Zoo { backbone, .. } => match backbone {
                Backbone::DenseNet(b) => b.stage_names(),
                Backbone::ResNet(b) => b.stage_names(),
                Backbone::Inception(b) => b.stage_names(),
            },
        }
    }

    /// Number of stages (without building their names).
    pub fn num_stages(&self) -> usize {
        match &self.net {
            Net::Cnn(c) => c.num_stages(),
            Net::Zoo { backbone, .. } => match backbone {
                Backbone::DenseNet(b) => b.num_stages(),
                Backbone::ResNet(b) => b.num_stages(),
                Backbone::Inception(b) => b.num_stages(),
            },
        }
    }

    /// Tensor-name prefixes of stage `i`.
    pub fn stage_prefixes(&self, i: usize) -> Vec<String> {
        match &self.net {
            Net::Cnn(c) => c.stage_prefixes(i),
            Net::Zoo { backbone, .. } => match backbone {
                Backbone::DenseNet(b) => b.stage_prefixes(i),
                Backbone::ResNet(b) => b.stage_prefixes(i),
                Backbone::Inception(b) => b.stage_prefixes(i),
            },
        }
    }

    /// Runs stage `i` alone.
    pub fn forward_stage(&self, i: usize, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        Ok(match &self.net {
            Net::Cnn(c) => c.forward_stage(i, x, train)?,
            Net::Zoo { backbone, .. } => match backbone {
                Backbone::DenseNet(b) => b.forward_stage(i, x, train)?,
                Backbone::ResNet(b) => b.forward_stage(i, x, train)?,
                Backbone::Inception(b) => b.forward_stage(i, x, train)?,
            },
        })
    }

    /// Checks an N×C×H×W input against the model's channels and size limits.
    pub fn check_input(&self, x: &Tensor) -> Result<(), ModelError> {
        if let Net::Cnn(c) = &self.net {
            return c.check_input(x);
        }
        let min = self.config.min_input_size();
        let ok = matches!(x.dims(), &[_, c, h, w] if c == self.config.in_channels && h >= min && w >= min);
        if ok {
            Ok(())
        } else {
            let s = self.config.input_size();
            Err(ModelError::BadInput {
                expected: format!(
                    "N×{}×{s}×{s} (at least {min}×{min}) for {}",
                    self.config.in_channels, self.config.arch
                ),
                found: format!("{:?}", x.dims()),
            })
        }
    }

    /// The last feature map, N×C×h×w.
    pub fn forward_features(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.check_input(x)?;
        let mut x = x.clone();
        for i in 0..self.num_stages() {
            let frozen = i < self.frozen_stages;
            x = self.forward_stage(i, &x, train && !frozen)?;
            if frozen {
                x = x.detach();
            }
        }
        Ok(x)
    }

    /// Pooling and head: N×classes logits.
    pub fn forward_head(&self, features: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        match &self.net {
            Net::Cnn(c) => c.forward_head(features, train),
            Net::Zoo { head, .. } => Ok(head.forward(features, &self.noise, train)?),
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.forward_head(&self.forward_features(x, train)?, train)
    }

    /// Length of the vector the head reads (channels of the last feature map, or the flattened map).
    pub fn num_features(&self) -> usize {
        match &self.net {
            Net::Cnn(c) => c.config().num_features().unwrap_or(0),
            Net::Zoo { backbone, .. } => match backbone {
                Backbone::DenseNet(b) => b.num_features(),
                Backbone::ResNet(b) => b.num_features(),
                Backbone::Inception(_) => InceptionV3::NUM_FEATURES,
            },
        }
    }

    /// The name of the last convolutional feature map (what Grad-CAM reads): the output of the
    /// last stage (`features.norm5`, `layer4`, `Mixed_7c`, `blocks.5`).
    pub fn last_feature_map(&self) -> String {
        self.stage_names().pop().unwrap_or_default()
    }

    /// Tensor-name prefixes of the head.
    pub fn head_prefixes(&self) -> Vec<String> {
        match &self.net {
            Net::Cnn(_) => vec!["head.".into()],
            Net::Zoo { head, .. } => head.prefixes(),
        }
    }

    /// Name of the final dense layer (`classifier`, `fc`, `head.classifier`).
    pub fn classifier_name(&self) -> String {
        match &self.net {
            Net::Cnn(_) => "head.classifier".into(),
            Net::Zoo { head, .. } => head.classifier_name().into(),
        }
    }

    /// Input size, normalisation and resize of this architecture (timm's `pretrained_cfg` for the
    /// zoo; ImageNet statistics and bilinear stretch for the custom CNNs).
    pub fn pretrained_cfg(&self) -> PretrainedCfg {
        let s = self.config.input_size();
        let c = self.config.in_channels;
        let (first_conv, interpolation, mean, std) = match self.config.arch {
            Arch::DenseNet121 | Arch::DenseNet169 | Arch::DenseNet201 => (
                "features.conv0",
                Interpolation::Bicubic,
                IMAGENET_MEAN,
                IMAGENET_STD,
            ),
            Arch::ResNet18 | Arch::ResNet34 | Arch::ResNet50 => (
                "conv1",
                Interpolation::Bilinear,
                IMAGENET_MEAN,
                IMAGENET_STD,
            ),
            Arch::InceptionV3 => (
                "Conv2d_1a_3x3.conv",
                Interpolation::Bicubic,
                INCEPTION_MEAN,
                INCEPTION_STD,
            ),
            _ => (
                "blocks.0.convs.0.conv",
                Interpolation::Bilinear,
                IMAGENET_MEAN,
                IMAGENET_STD,
            ),
        };
        let tag = self.config.arch.timm_tag();
        PretrainedCfg {
            hf_hub_id: tag.as_ref().map(|t| format!("timm/{t}")),
            tag,
            input_size: [c, s, s],
            interpolation,
            crop_pct: if self.net_is_cnn() { 1.0 } else { 0.875 },
            mean,
            std,
            first_conv: first_conv.into(),
            classifier: self.classifier_name(),
        }
    }

    fn net_is_cnn(&self) -> bool {
        matches!(self.net, Net::Cnn(_))
    }

    /// Freezes the backbone in part or whole. Unknown stage names are refused with the valid ones.
    pub fn set_trainable(&mut self, trainable: &Trainable) -> Result<(), ModelError> {
        let names = self.stage_names();
        self.frozen_stages = match trainable {
            Trainable::All => 0,
            Trainable::Head => names.len(),
            Trainable::From(stage) => {
                names
                    .iter()
                    .position(|n| n == stage)
                    .ok_or_else(|| ModelError::UnknownStage {
                        name: stage.clone(),
                        arch: self.config.arch.to_string(),
                        stages: names.join(", "),
                    })?
            }
        };
        Ok(())
    }

    /// Number of leading stages that are frozen.
    pub fn frozen_stages(&self) -> usize {
        self.frozen_stages
    }

    /// True when `name` belongs to a frozen stage.
    pub fn is_frozen(&self, name: &str) -> bool {
        (0..self.frozen_stages).any(|i| self.stage_prefixes(i).iter().any(|p| name.starts_with(p)))
    }

    /// The variables an optimiser should update, sorted by name: no BatchNorm running statistics and
    /// nothing of a frozen stage.
    pub fn trainable_vars(&self, varmap: &VarMap) -> Vec<(String, Var)> {
        let frozen: Vec<String> = (0..self.frozen_stages)
            .flat_map(|i| self.stage_prefixes(i))
            .collect();
        let data = lock_vars(varmap);
        let mut vars: Vec<(String, Var)> = data
            .iter()
            .filter(|(name, _)| {
                !is_running_stat(name) && !frozen.iter().any(|p| name.starts_with(p.as_str()))
            })
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// The same model for inference: its weights as plain tensors over the same storage (no copy;
    /// later optimiser updates show through), so a forward records no autograd graph and each
    /// activation is freed once the next layer has read it. BatchNorm running statistics are
    /// copied as they are now: take a fresh one after training further. Gradients with respect to
    /// an input `Var` (Grad-CAM) still flow.
    pub fn detached(&self, varmap: &VarMap) -> Result<Self, ModelError> {
        let data = lock_vars(varmap);
        let tensors: std::collections::HashMap<String, Tensor> = data
            .iter()
            .map(|(name, v)| (name.clone(), v.as_tensor().detach()))
            .collect();
        let (dtype, device) = match data.values().next() {
            Some(v) => (v.dtype(), v.device().clone()),
            None => (DType::F32, Device::Cpu),
        };
        drop(data);
        let mut m = Self::new(
            &self.config,
            VarBuilder::from_tensors(tensors, dtype, &device),
        )?;
        m.frozen_stages = self.frozen_stages;
        m.noise = self.noise.clone();
        Ok(m)
    }

    /// [`Model::detached`] prepared for inference: every BatchNorm that follows a convolution
    /// directly is folded into it, with the ReLU after it (every convolution of ResNet,
    /// Inception-v3 and the custom CNN, DenseNet's stem and bottlenecks). A snapshot: unlike `detached`, later
    /// updates of the variables do not reach the folded layers, so build one per evaluation.
    /// Training it is refused.
    pub fn for_inference(&self, varmap: &VarMap) -> Result<Self, ModelError> {
        let mut m = self.detached(varmap)?;
        match &mut m.net {
            Net::Cnn(c) => c.fold_batch_norms()?,
            Net::Zoo { backbone, .. } => match backbone {
                Backbone::ResNet(r) => r.fold_batch_norms()?,
                Backbone::DenseNet(d) => d.fold_batch_norms()?,
                Backbone::Inception(i) => i.fold_batch_norms()?,
            },
        }
        Ok(m)
    }

    /// Writes the evaluation forward into an ONNX graph from the value `x`: its last feature
    /// map and its logits.
    pub(crate) fn onnx(
        &self,
        g: &mut OnnxGraph,
        x: &str,
    ) -> candle_core::Result<(OnnxValue, OnnxValue)> {
        match &self.net {
            Net::Cnn(c) => {
                let f = onnx_zoo::cnn_features(c, g, x)?;
                let logits = onnx_zoo::cnn_head(c, g, &f)?;
                Ok((f, logits))
            }
            Net::Zoo { backbone, head } => {
                let f = match backbone {
                    Backbone::DenseNet(b) => onnx_zoo::densenet(b, g, x)?,
                    Backbone::ResNet(b) => onnx_zoo::resnet(b, g, x)?,
                    Backbone::Inception(b) => onnx_zoo::inception(b, g, x)?,
                };
                let logits = onnx_zoo::head(head, g, &f)?;
                Ok((f, logits))
            }
        }
    }

    /// Reseeds dropout (the training loop does it once per step from the run's seed).
    pub fn set_seed(&self, seed: u64) {
        self.noise.reseed(seed);
        if let Net::Cnn(c) = &self.net {
            c.set_seed(seed);
        }
    }

    /// Checkpoint tensors this architecture accepts and ignores (Inception-v3's auxiliary
    /// classifier, BatchNorm's `num_batches_tracked`).
    pub fn ignores_tensor(&self, name: &str) -> bool {
        name.ends_with("num_batches_tracked")
            || (self.config.arch == Arch::InceptionV3 && name.starts_with("AuxLogits."))
    }
}

impl candle_core::ModuleT for Model {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.forward(x, train).map_err(|e| match e {
            ModelError::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        })
    }
}
