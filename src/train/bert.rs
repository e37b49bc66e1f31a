//! The top BERT layers as trainable candle variables.
//!
//! candle-transformers' BERT cannot be trained (its fused layer norm has no backward pass and
//! raises no error), so the layers are written here on candle-core ops that all have
//! gradients: layer norm as mean, variance and square root; softmax as max-shift, exp and
//! sum; GELU as `gelu_erf`, the exact form the ONNX graph computes. Weights keep their
//! Hugging Face names, so an export is a safetensors file the graph builder reads in place
//! of the base weights of the same names.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};

use super::head::Trainable;
use crate::model::BertConfig;

/// The sub-weights of one layer, in Hugging Face naming under `encoder.layer.{i}.`.
const LAYER_WEIGHTS: [&str; 16] = [
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
];

/// The top `n` encoder layers of a BERT model, trainable.
pub struct TopLayers {
    /// `(name, variable)` for every weight, in layer order.
    vars: Vec<(String, Var)>,
    /// Index of the first trained layer.
    pub first: usize,
    /// Number of trained layers.
    pub n: usize,
    heads: usize,
    dim: usize,
    eps: f64,
}

impl TopLayers {
    /// Loads layers `cfg.num_hidden_layers - n ..` from a safetensors file of the base model.
    pub fn load(cfg: &BertConfig, weights: &Path, n: usize) -> candle_core::Result<Self> {
        if n == 0 || n > cfg.num_hidden_layers {
            candle_core::bail!(
                "cannot train the top {n} layers of a model with {} layers",
                cfg.num_hidden_layers
            );
        }
        let all = candle_core::safetensors::load(weights, &Device::Cpu)?;
        let first = cfg.num_hidden_layers - n;
        let mut vars = Vec::new();
        for l in first..cfg.num_hidden_layers {
            for w in LAYER_WEIGHTS {
                let name = format!("encoder.layer.{l}.{w}");
                let t = all
                    .get(&name)
                    .ok_or_else(|| candle_core::Error::Msg(format!("missing weight {name}")))?;
                vars.push((name, Var::from_tensor(&t.to_dtype(DType::F32)?)?));
            }
        }
        Ok(TopLayers {
            vars,
            first,
            n,
            heads: cfg.num_attention_heads,
            dim: cfg.hidden_size,
            eps: cfg.layer_norm_eps,
        })
    }

    fn w(&self, layer: usize, name: &str) -> &Tensor {
        self.vars[layer * LAYER_WEIGHTS.len()
            + LAYER_WEIGHTS
                .iter()
                .position(|w| *w == name)
                .expect("known weight")]
        .1
        .as_tensor()
    }

    fn linear(&self, x: &Tensor, layer: usize, prefix: &str) -> candle_core::Result<Tensor> {
        let w = self.w(layer, &format!("{prefix}.weight"));
        let b = self.w(layer, &format!("{prefix}.bias"));
        let (bs, l, inp) = x.dims3()?;
        let out = w.dim(0)?;
        x.reshape((bs * l, inp))?
            .matmul(&w.t()?)?
            .broadcast_add(b)?
            .reshape((bs, l, out))
    }

    fn layer_norm(&self, x: &Tensor, layer: usize, prefix: &str) -> candle_core::Result<Tensor> {
        let g = self.w(layer, &format!("{prefix}.weight"));
        let b = self.w(layer, &format!("{prefix}.bias"));
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(g)?
            .broadcast_add(b)
    }

    fn layer(&self, x: &Tensor, bias: &Tensor, l: usize) -> candle_core::Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let hd = d / self.heads;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, s, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.linear(x, l, "attention.self.query")?)?;
        let k = split(self.linear(x, l, "attention.self.key")?)?;
        let v = split(self.linear(x, l, "attention.self.value")?)?;
        let scores =
            (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?.broadcast_add(bias)?;
        let max = scores.max_keepdim(D::Minus1)?.detach();
        let e = scores.broadcast_sub(&max)?.exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let ctx = p
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, d))?;
        let a = (self.linear(&ctx, l, "attention.output.dense")? + x)?;
        let a = self.layer_norm(&a, l, "attention.output.LayerNorm")?;
        let i = self.linear(&a, l, "intermediate.dense")?.gelu_erf()?;
        let o = (self.linear(&i, l, "output.dense")? + a)?;
        self.layer_norm(&o, l, "output.LayerNorm")
    }
}

impl Trainable for TopLayers {
    fn forward(&self, x: &Tensor, mask_all: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        // Additive attention bias: 0 on real rows, -1e4 on padding (exp underflows to 0).
        let bias = ((mask_all - 1.0)? * 1e4)?.reshape((b, 1, 1, s))?;
        let mut x = x.clone();
        for l in 0..self.n {
            x = self.layer(&x, &bias, l)?;
        }
        Ok(x)
    }

    fn vars(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    fn export(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        Ok(self
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect())
    }

    fn dim(&self) -> usize {
        self.dim
    }
}
