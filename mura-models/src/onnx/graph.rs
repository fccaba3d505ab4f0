//! An ONNX graph under construction: uniquely named values, weights as initializers, and one
//! function per operator the zoo needs (each mapping a layer of ours onto ONNX's operator with
//! the same semantics: padding, `count_include_pad`, PyTorch's floor-mode pooling).

use candle_core::{DType, Tensor};
use candle_nn::Linear;
use mura_kernels::{Pool2d, PoolKind};

use super::proto::{AttributeProto, NodeProto, TensorProto, attribute_type, data_type};
use crate::layers::{BatchNorm, Conv};

/// A value of the graph: the name of a node's output (or of the graph input).
pub(crate) type Value = String;

/// The nodes and weights written so far.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    names: std::collections::HashSet<String>,
}

/// An integer attribute. ONNX readers written against proto2 may not see an integer the
/// encoder leaves out for being 0, so only values other than the operator's default are given.
fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: attribute_type::INT,
        ..AttributeProto::default()
    }
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: v.iter().map(|&x| x as i64).collect(),
        r#type: attribute_type::INTS,
        ..AttributeProto::default()
    }
}

fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f,
        r#type: attribute_type::FLOAT,
        ..AttributeProto::default()
    }
}

impl Graph {
    /// A name not used yet: `stem`, else `stem.1`, `stem.2`...
    fn fresh(&mut self, stem: &str) -> String {
        let mut name = stem.to_string();
        let mut i = 0;
        while self.names.contains(&name) {
            i += 1;
            name = format!("{stem}.{i}");
        }
        self.names.insert(name.clone());
        name
    }

    /// Reserves `name` for the graph input.
    pub fn input(&mut self, name: &str) -> Value {
        self.fresh(name)
    }

    /// `t` as an f32 weight named after `name`.
    pub fn weight(&mut self, name: &str, t: &Tensor) -> candle_core::Result<Value> {
        let data: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let dims = t.dims().iter().map(|&d| d as i64).collect();
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(self.initializer(name, dims, data_type::FLOAT, raw))
    }

    /// A constant vector of 64-bit integers (a shape).
    pub fn int64s(&mut self, name: &str, v: &[i64]) -> Value {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.initializer(name, vec![v.len() as i64], data_type::INT64, raw)
    }

    fn initializer(&mut self, name: &str, dims: Vec<i64>, data_type: i32, raw: Vec<u8>) -> Value {
        let name = self.fresh(name);
        self.initializers.push(TensorProto {
            dims,
            data_type,
            name: name.clone(),
            raw_data: raw,
        });
        name
    }

    /// Appends an `op` node named after `name` and returns its (single) output.
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) -> Value {
        let out = self.fresh(name);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute,
            domain: String::new(),
        });
        out
    }

    pub fn relu(&mut self, x: &str, name: &str) -> Value {
        self.node("Relu", &format!("{name}.relu"), &[x], vec![])
    }

    /// A convolution (weights `{name}.weight`, `{name}.bias`), with its fused ReLU when it has one.
    pub fn conv(&mut self, c: &Conv, x: &str, name: &str) -> candle_core::Result<Value> {
        let (kh, kw) = (c.weight.dim(2)?, c.weight.dim(3)?);
        let (ph, pw) = c.padding;
        let w = self.weight(&format!("{name}.weight"), &c.weight)?;
        let mut inputs = vec![x.to_string(), w];
        if let Some(b) = &c.bias {
            inputs.push(self.weight(&format!("{name}.bias"), b)?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let attrs = vec![
            ints("kernel_shape", &[kh, kw]),
            ints("strides", &[c.stride, c.stride]),
            ints("pads", &[ph, pw, ph, pw]),
            ints("dilations", &[c.dilation, c.dilation]),
        ];
        let y = self.node("Conv", name, &inputs, attrs);
        Ok(if c.relu { self.relu(&y, name) } else { y })
    }

    /// A BatchNorm in evaluation mode, then a ReLU when `relu`; what is left of one folded into
    /// its convolution (nothing, or its ReLU), as [`BatchNorm::forward_act`] runs it.
    pub fn batch_norm(
        &mut self,
        bn: &BatchNorm,
        x: &str,
        name: &str,
        relu: bool,
    ) -> candle_core::Result<Value> {
        if let Some(fused) = bn.folded() {
            return match (relu, fused) {
                (true, false) => Ok(self.relu(x, name)),
                (false, true) => {
                    candle_core::bail!("{name}: a BatchNorm folded with its ReLU used without one")
                }
                _ => Ok(x.to_string()),
            };
        }
        let (weight, bias, mean, var, eps) = bn.parts();
        let inputs = [
            x.to_string(),
            self.weight(&format!("{name}.weight"), weight)?,
            self.weight(&format!("{name}.bias"), bias)?,
            self.weight(&format!("{name}.running_mean"), mean)?,
            self.weight(&format!("{name}.running_var"), var)?,
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let y = self.node(
            "BatchNormalization",
            name,
            &inputs,
            vec![float("epsilon", eps as f32)],
        );
        Ok(if relu { self.relu(&y, name) } else { y })
    }

    /// Max or average pooling (PyTorch's floor mode, ONNX's default).
    pub fn pool(&mut self, p: &Pool2d, x: &str, name: &str) -> Value {
        let (ph, pw) = p.padding;
        let mut attrs = vec![
            ints("kernel_shape", &[p.kernel.0, p.kernel.1]),
            ints("strides", &[p.stride.0, p.stride.1]),
            ints("pads", &[ph, pw, ph, pw]),
        ];
        let op = match p.kind {
            PoolKind::Max => "MaxPool",
            PoolKind::Avg { count_include_pad } => {
                if count_include_pad {
                    attrs.push(int("count_include_pad", 1));
                }
                "AveragePool"
            }
        };
        self.node(op, name, &[x], attrs)
    }

    /// Global average or max pooling to N×C.
    pub fn global_pool(&mut self, x: &str, max: bool, name: &str) -> Value {
        let op = if max {
            "GlobalMaxPool"
        } else {
            "GlobalAveragePool"
        };
        let y = self.node(op, name, &[x], vec![]);
        self.flatten(&y, name)
    }

    /// N×… to N×(…).
    pub fn flatten(&mut self, x: &str, name: &str) -> Value {
        self.node(
            "Flatten",
            &format!("{name}.flatten"),
            &[x],
            vec![int("axis", 1)],
        )
    }

    /// Channels concatenated.
    pub fn concat(&mut self, xs: &[Value], name: &str) -> Value {
        if let [only] = xs {
            return only.clone();
        }
        let inputs: Vec<&str> = xs.iter().map(String::as_str).collect();
        self.node("Concat", name, &inputs, vec![int("axis", 1)])
    }

    pub fn binary(&mut self, op: &str, a: &str, b: &str, name: &str) -> Value {
        self.node(op, name, &[a, b], vec![])
    }

    /// A dense layer: x Wᵀ + b.
    pub fn linear(&mut self, l: &Linear, x: &str, name: &str) -> candle_core::Result<Value> {
        let mut inputs = vec![
            x.to_string(),
            self.weight(&format!("{name}.weight"), l.weight())?,
        ];
        if let Some(b) = l.bias() {
            inputs.push(self.weight(&format!("{name}.bias"), b)?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.node("Gemm", name, &inputs, vec![int("transB", 1)]))
    }

    /// A ReLU-ed dense layer.
    pub fn linear_relu(&mut self, l: &Linear, x: &str, name: &str) -> candle_core::Result<Value> {
        let y = self.linear(l, x, name)?;
        Ok(self.relu(&y, name))
    }

    pub fn transpose(&mut self, x: &str, perm: &[usize], name: &str) -> Value {
        self.node("Transpose", name, &[x], vec![ints("perm", perm)])
    }

    pub fn softmax(&mut self, x: &str, name: &str) -> Value {
        self.node("Softmax", name, &[x], vec![int("axis", -1)])
    }
}
