//! The frozen-backbone feature cache. When the whole backbone is frozen (it runs in evaluation
//! mode and gets no gradient) and no random augmentation changes the pixels, every epoch feeds
//! the head the same feature maps: compute them once, keep them in memory, and train the head on
//! them — each epoch then costs a head forward and backward instead of a backbone forward.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use mura_augment::Pipeline;
use mura_data::LoaderConfig;
use mura_models::Model;

use crate::TrainError;
use crate::epoch::{Batch, Example, batches};

/// Above this many bytes of features a run trains without the cache (it says so).
pub const MAX_CACHE_BYTES: usize = 8 << 30;

/// True when every epoch would feed the head the same features: `enabled` (the run's
/// `train.feature_cache`), the backbone wholly frozen, and `pipeline` without random steps.
pub fn applies(enabled: bool, model: &Model, pipeline: &Pipeline) -> bool {
    enabled
        && model.num_stages() > 0
        && model.frozen_stages() == model.num_stages()
        && pipeline.augment.is_deterministic()
}

/// Backbone features of every example, row `i` for `examples[i]`.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    pub features: Tensor,
}

impl FeatureCache {
    /// Runs `examples` through `pipeline` and the frozen backbone of `model`, `batch_size` at a
    /// time. Returns `Ok(None)` when the features would pass
    /// `max_bytes` (known after the first batch).
    pub fn compute(
        model: &Model,
        examples: &Arc<Vec<Example>>,
        pipeline: &Pipeline,
        loader: LoaderConfig,
        batch_size: usize,
        device: &Device,
        max_bytes: usize,
    ) -> Result<Option<Self>, TrainError> {
        let loader = LoaderConfig {
            shuffle: false,
            ..loader
        };
        let mut parts = Vec::new();
        let mut order = Vec::with_capacity(examples.len());
        for batch in batches(examples, pipeline, loader, 0, batch_size, device)? {
            let b = batch?;
            let f = model.forward_features(&b.x, false)?.detach();
            let per_image = f.elem_count() / b.indices.len().max(1) * f.dtype().size_in_bytes();
            if per_image.saturating_mul(examples.len()) > max_bytes {
                return Ok(None);
            }
            order.extend_from_slice(&b.indices);
            parts.push(f);
        }
        if parts.is_empty() {
            return Ok(None);
        }
        let features = Tensor::cat(&parts, 0)?;
        // Rows in example order, whatever order the loader delivered them in.
        let features = if order.iter().enumerate().all(|(i, &j)| i == j) {
            features
        } else {
            let mut row = vec![0u32; order.len()];
            for (pos, &i) in order.iter().enumerate() {
                row[i] = pos as u32;
            }
            let len = row.len();
            features.index_select(&Tensor::from_vec(row, len, device)?, 0)?
        };
        Ok(Some(Self { features }))
    }

    /// Images cached.
    pub fn len(&self) -> usize {
        self.features.dims().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.features.elem_count() * self.features.dtype().size_in_bytes()
    }

    /// Batches of cached features in `order` (the loader's order of the epoch), from position
    /// `start`: the batches an uncached epoch would form, holding features instead of pixels.
    pub fn batches(
        &self,
        examples: &Arc<Vec<Example>>,
        mut order: Vec<usize>,
        start: usize,
        batch_size: usize,
    ) -> CachedBatches {
        order.drain(..start.min(order.len()));
        CachedBatches {
            features: self.features.clone(),
            examples: Arc::clone(examples),
            order,
            pos: 0,
            batch_size: batch_size.max(1),
        }
    }
}

/// Batches of a [`FeatureCache`]; [`Batch::features`] is true.
#[derive(Debug)]
pub struct CachedBatches {
    features: Tensor,
    examples: Arc<Vec<Example>>,
    order: Vec<usize>,
    pos: usize,
    batch_size: usize,
}

impl Iterator for CachedBatches {
    type Item = Result<Batch, TrainError>;

    fn next(&mut self) -> Option<Self::Item> {
        let end = (self.pos + self.batch_size).min(self.order.len());
        if self.pos >= end {
            return None;
        }
        let indices: Vec<usize> = self.order[self.pos..end].to_vec();
        self.pos = end;
        let make = || -> Result<Batch, TrainError> {
            let n = indices.len();
            let dev = self.features.device();
            let rows: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
            let pick = |f: fn(&Example) -> f32| -> Vec<f32> {
                indices.iter().map(|&i| f(&self.examples[i])).collect()
            };
            Ok(Batch {
                x: self
                    .features
                    .index_select(&Tensor::from_vec(rows, n, dev)?, 0)?,
                y: Tensor::from_vec(pick(|e| f32::from(u8::from(e.label))), (n, 1), dev)?,
                w: Tensor::from_vec(pick(|e| e.weight), (n, 1), dev)?,
                indices,
                features: true,
            })
        };
        Some(make())
    }
}
