//! Grad-CAM (Selvaraju et al., 2017): where in the image a model's evidence for a class lies.
//!
//! The last convolutional feature map `A` (what [`Model::forward_features`] returns, the layer
//! [`Model::last_feature_map`] names) is weighted channel by channel with the spatial mean of the
//! class logit's gradient, `α_c = mean_ij ∂y/∂A_cij`, summed over channels and rectified:
//! `relu(Σ_c α_c A_c)`. The map has the feature map's resolution; callers upsample it.

use candle_core::{D, DType, Tensor, Var};

use crate::{Model, ModelError};

/// The class activation map of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCam {
    /// Row-major `height × width`, scaled to [0, 1] by its maximum (all zeros when no location
    /// speaks for the class).
    pub map: Vec<f32>,
    pub height: usize,
    pub width: usize,
    /// The largest value before scaling: 0 when the map is empty.
    pub peak: f32,
    /// The class logit.
    pub logit: f32,
    /// `sigmoid(logit)`.
    pub probability: f32,
}

impl GradCam {
    /// The (row, column) of the map's largest value.
    pub fn argmax(&self) -> (usize, usize) {
        let i = self
            .map
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        (i / self.width.max(1), i % self.width.max(1))
    }

    /// The map resized to `width × height` by bilinear interpolation (pixel centres aligned, as
    /// `F.interpolate(..., align_corners=False)`), row-major.
    pub fn upsampled(&self, width: usize, height: usize) -> Vec<f32> {
        let (mw, mh) = (self.width, self.height);
        if mw == 0 || mh == 0 || self.map.len() != mw * mh {
            return vec![0.0; width * height];
        }
        // Source coordinate and the two neighbours' weights along one axis.
        let axis = |dst: usize, n_dst: usize, n_src: usize| -> (usize, usize, f32) {
            let s = ((dst as f32 + 0.5) * n_src as f32 / n_dst as f32 - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(n_src - 1);
            let i1 = (i0 + 1).min(n_src - 1);
            (i0, i1, s - i0 as f32)
        };
        let mut out = Vec::with_capacity(width * height);
        for y in 0..height {
            let (y0, y1, fy) = axis(y, height, mh);
            for x in 0..width {
                let (x0, x1, fx) = axis(x, width, mw);
                let at = |r: usize, c: usize| self.map[r * mw + c];
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                out.push(top * (1.0 - fy) + bottom * fy);
            }
        }
        out
    }
}

/// The Grad-CAM of class `class` for one input image (`1×C×H×W`), in evaluation mode.
pub fn grad_cam(model: &Model, x: &Tensor, class: usize) -> Result<GradCam, ModelError> {
    if x.dim(0)? != 1 {
        return Err(ModelError::BadInput {
            expected: "one image (1×C×H×W) for Grad-CAM".into(),
            found: format!("{:?}", x.dims()),
        });
    }
    let classes = model.config().num_classes;
    if class >= classes {
        return Err(ModelError::BadConfig {
            reason: format!("class {class} asked of a model with {classes} class(es)"),
        });
    }
    let features = model.forward_features(x, false)?.detach();
    if features.rank() != 4 {
        return Err(ModelError::BadInput {
            expected: "a 4-d feature map (N×C×h×w)".into(),
            found: format!("{:?}", features.dims()),
        });
    }
    let (_, _, height, width) = features.dims4()?;
    let a = Var::from_tensor(&features.to_dtype(DType::F32)?)?;
    let logit = model
        .forward_head(a.as_tensor(), false)?
        .narrow(1, class, 1)?;
    let grads = logit.sum_all()?.backward()?;
    let g = grads
        .get(a.as_tensor())
        .cloned()
        .unwrap_or(a.as_tensor().zeros_like()?);
    // α: N×C×1×1, the spatial mean of the gradient.
    let alpha = g.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
    let cam = a.as_tensor().broadcast_mul(&alpha)?.sum(1)?.relu()?;
    let map: Vec<f32> = cam.flatten_all()?.to_vec1()?;
    let peak = map.iter().copied().fold(0.0f32, f32::max);
    let map = if peak > 0.0 && peak.is_finite() {
        map.iter().map(|v| v / peak).collect()
    } else {
        vec![0.0; map.len()]
    };
    let logit = logit.flatten_all()?.to_vec1::<f32>()?[0];
    Ok(GradCam {
        map,
        height,
        width,
        peak,
        logit,
        probability: 1.0 / (1.0 + (-logit).exp()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Arch, ModelConfig};
    use candle_core::Device;

    /// α_c is the mean gradient over the map, so `α_c · h·w` is the derivative of the logit along a
    /// uniform shift of channel c: check it by central differences through the head.
    #[test]
    fn channel_weights_match_finite_differences() {
        let dev = Device::Cpu;
        let mut config = ModelConfig::new(Arch::from_name("custom-cnn").unwrap());
        config.input_size = Some(64);
        let (model, _vars) = Model::with_seed(&config, 7, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, config.in_channels, 64, 64), &dev).unwrap();
        let cam = grad_cam(&model, &x, 0).unwrap();
        assert!(cam.map.iter().all(|v| (0.0..=1.0).contains(v)));
        let features = model.forward_features(&x, false).unwrap();
        let (_, c, h, w) = features.dims4().unwrap();
        assert_eq!((cam.height, cam.width), (h, w));
        let head = |f: &Tensor| -> f64 {
            f64::from(
                model
                    .forward_head(f, false)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()[0],
            )
        };
        assert!((head(&features) - f64::from(cam.logit)).abs() < 1e-4);
        // Rebuild the unscaled map from finite-difference weights and compare shapes of the maps.
        let eps = 1e-2;
        let a: Vec<f32> = features.flatten_all().unwrap().to_vec1().unwrap();
        let mut reference = vec![0.0f64; h * w];
        for ch in 0..c {
            let shift = |s: f32| {
                let mut b = a.clone();
                for v in &mut b[ch * h * w..(ch + 1) * h * w] {
                    *v += s;
                }
                Tensor::from_vec(b, (1, c, h, w), &dev).unwrap()
            };
            let alpha =
                (head(&shift(eps)) - head(&shift(-eps))) / (2.0 * f64::from(eps)) / (h * w) as f64;
            for (k, r) in reference.iter_mut().enumerate() {
                *r += alpha * f64::from(a[ch * h * w + k]);
            }
        }
        let reference: Vec<f64> = reference.iter().map(|v| v.max(0.0)).collect();
        let peak = reference.iter().copied().fold(0.0, f64::max);
        assert!(
            (peak - f64::from(cam.peak)).abs() <= 2e-2 * peak.max(1e-3),
            "{peak} vs {}",
            cam.peak
        );
        for (r, m) in reference.iter().zip(&cam.map) {
            assert!(
                (r / peak.max(1e-12) - f64::from(*m)).abs() < 2e-2,
                "{r} vs {m}"
            );
        }
    }

    #[test]
    fn upsampling_keeps_values_and_the_peak_cell() {
        let cam = GradCam {
            map: vec![0.0, 0.25, 0.5, 1.0],
            height: 2,
            width: 2,
            peak: 1.0,
            logit: 0.0,
            probability: 0.5,
        };
        assert_eq!(cam.argmax(), (1, 1));
        let up = cam.upsampled(4, 4);
        // Corners keep the cell values (clamped at the border); the middle interpolates.
        assert_eq!(up[0], 0.0);
        assert_eq!(up[15], 1.0);
        assert!(
            (up[5] - (0.0 * 0.5625 + 0.25 * 0.1875 + 0.5 * 0.1875 + 1.0 * 0.0625)).abs() < 1e-6
        );
        assert_eq!(cam.upsampled(2, 2), cam.map);
        let (i, _) = up
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        assert_eq!(i, 15);
    }

    #[test]
    fn every_zoo_model_gives_a_map_of_its_last_feature_map() {
        let dev = Device::Cpu;
        for (name, size) in [
            ("densenet121", 64),
            ("resnet18", 64),
            ("resnet50", 64),
            ("inception_v3", 75),
            ("alexnet-style", 64),
        ] {
            let mut config = ModelConfig::new(Arch::from_name(name).unwrap());
            config.input_size = Some(size);
            let (model, _vars) = Model::with_seed(&config, 1, &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, config.in_channels, size, size), &dev).unwrap();
            let cam = grad_cam(&model, &x, 0).unwrap();
            let f = model.forward_features(&x, false).unwrap();
            assert_eq!(
                (cam.height, cam.width),
                (f.dim(2).unwrap(), f.dim(3).unwrap()),
                "{name}"
            );
            assert!(
                cam.map
                    .iter()
                    .all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
                "{name}"
            );
            assert!((0.0..=1.0).contains(&cam.probability), "{name}");
        }
        let mut config = ModelConfig::new(Arch::from_name("resnet18").unwrap());
        config.input_size = Some(64);
        let (model, _vars) = Model::with_seed(&config, 1, &dev).unwrap();
        let two = Tensor::zeros((2, 3, 64, 64), DType::F32, &dev).unwrap();
        assert!(matches!(
            grad_cam(&model, &two, 0),
            Err(ModelError::BadInput { .. })
        ));
        let one = Tensor::zeros((1, 3, 64, 64), DType::F32, &dev).unwrap();
        assert!(matches!(
            grad_cam(&model, &one, 1),
            Err(ModelError::BadConfig { .. })
        ));
    }
}
