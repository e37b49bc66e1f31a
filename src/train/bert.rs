//! The top BERT layers as trainable candle variables.
//!
//! candle-transformers' BERT cannot be trained (its fused layer norm has no backward pass and
//! raises no error), so the layers are written here on candle-core ops that all have
//! gradients: layer norm as mean, variance and square root; softmax as max-shift, exp and
//! sum; GELU as `gelu_erf`, the exact form the ONNX graph computes. Weights keep their
//! Hugging Face names, so an export is a safetensors file the graph builder reads in place
//! of the base weights of the same names.

use std::collections::HashMap;
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

    /// Weights of whole top layers, fewer than this part trains (a three-layer model
    /// fine-tuned with four): those layers are set and the lower ones keep their weights.
    fn restore_part(&self, named: &HashMap<String, Tensor>) -> candle_core::Result<usize> {
        // How many of each trained layer's tensors the weights hold, bottom layer first.
        let held: Vec<usize> = (self.first..self.first + self.n)
            .map(|l| {
                LAYER_WEIGHTS
                    .iter()
                    .filter(|w| named.contains_key(&format!("encoder.layer.{l}.{w}")))
                    .count()
            })
            .collect();
        let own: usize = held.iter().sum();
        if own < named.len() {
            let alien = named
                .keys()
                .find(|k| !self.vars.iter().any(|(n, _)| n == *k));
            candle_core::bail!(
                "the weights hold {}, which the top {} layers lack",
                alien.map_or("other tensors", String::as_str),
                self.n
            );
        }
        // Whole layers, and the top ones: from the first layer held up to the last.
        let Some(from) = held.iter().position(|&h| h > 0) else {
            candle_core::bail!("the weights hold none of the top {} layers", self.n);
        };
        if let Some(i) = (from..self.n).find(|&i| held[i] != LAYER_WEIGHTS.len()) {
            candle_core::bail!(
                "the weights hold {} of layer {}'s {} tensors; give whole top layers",
                held[i],
                self.first + i,
                LAYER_WEIGHTS.len()
            );
        }
        for (name, var) in &self.vars {
            if let Some(t) = named.get(name) {
                var.set(t)?;
            }
        }
        Ok(own)
    }

    fn dim(&self) -> usize {
        self.dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two layers (4 and 5 of 6) of width 1, every weight `x`.
    fn two_layers(x: f32) -> TopLayers {
        let vars = (4..6)
            .flat_map(|l| LAYER_WEIGHTS.map(|w| format!("encoder.layer.{l}.{w}")))
            .map(|n| (n, Var::new(&[x], &Device::Cpu).unwrap()))
            .collect();
        TopLayers {
            vars,
            first: 4,
            n: 2,
            heads: 1,
            dim: 1,
            eps: 1e-12,
        }
    }

    fn weights_of(l: usize, x: f32) -> HashMap<String, Tensor> {
        LAYER_WEIGHTS
            .map(|w| {
                let t = Tensor::new(&[x], &Device::Cpu).unwrap();
                (format!("encoder.layer.{l}.{w}"), t)
            })
            .into_iter()
            .collect()
    }

    fn values(m: &TopLayers) -> Vec<f32> {
        m.vars
            .iter()
            .map(|(_, v)| v.as_tensor().to_vec1::<f32>().unwrap()[0])
            .collect()
    }

    #[test]
    fn the_top_layer_alone_sets_it_and_keeps_the_lower_one() {
        let m = two_layers(1.0);
        assert_eq!(m.restore_part(&weights_of(5, 7.0)).unwrap(), 16);
        let v = values(&m);
        assert!(v[..16].iter().all(|&x| x == 1.0) && v[16..].iter().all(|&x| x == 7.0));
        // The strict restore of a resume still wants every tensor.
        assert!(m.restore(&weights_of(5, 7.0)).is_err());
    }

    #[test]
    fn weights_that_are_not_whole_top_layers_are_refused_and_change_nothing() {
        let m = two_layers(1.0);
        // A lower layer without the top one above it.
        let err = m.restore_part(&weights_of(4, 7.0)).unwrap_err().to_string();
        assert!(err.contains("layer 5"), "{err}");
        // Part of a layer.
        let mut part = weights_of(5, 7.0);
        part.remove("encoder.layer.5.output.dense.bias");
        assert!(m
            .restore_part(&part)
            .unwrap_err()
            .to_string()
            .contains("15 of layer 5"));
        // A layer this part does not train, or nothing at all.
        let mut alien = weights_of(5, 7.0);
        alien.extend(weights_of(3, 7.0));
        assert!(m
            .restore_part(&alien)
            .unwrap_err()
            .to_string()
            .contains("layer.3"));
        assert!(m.restore_part(&HashMap::new()).is_err());
        assert!(values(&m).iter().all(|&x| x == 1.0));
    }
}
