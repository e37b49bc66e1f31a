//! The graph builder: ONNX nodes and initializers with unique value names, weights looked
//! up by their safetensors names, linear layers written in f32 or quantised to int8.

use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};

use super::*;

/// Collects nodes and initializers with unique value names.
pub(super) struct Builder<'a> {
    pub(super) nodes: Vec<NodeProto>,
    pub(super) inits: Vec<TensorProto>,
    /// Weight files, searched in order.
    pub(super) weights: Vec<&'a SafeTensors<'a>>,
    pub(super) used: HashMap<String, ()>,
    pub(super) n: usize,
    pub(super) precision: Precision,
    /// Int8 only: input channels kept in f32, by weight name.
    pub(super) outliers: Option<&'a OutlierChannels>,
    /// Probe graphs only: (weight name, input value) of every linear layer.
    pub(super) probes: Option<Vec<(String, String)>>,
    /// Int8 only: the quantised form of each linear layer's input, by (input value, outlier
    /// channels), so that the query, key and value layers quantise their shared input once.
    pub(super) quantised: HashMap<(String, Vec<usize>), QuantisedInput>,
}

/// A linear layer's input prepared for the int8 product.
#[derive(Clone)]
pub(super) struct QuantisedInput {
    /// `uint8 [.., in]`: each token row as `round(x / scale) + 128`, outlier channels zeroed.
    q: String,
    /// `float [.., 1]`: each token row's scale (its largest magnitude / 127).
    scale: String,
    /// `float [.., k]`: the outlier channels, gathered for the f32 product.
    outliers: Option<String>,
}

pub(super) fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INT),
        i: Some(v),
        ..Default::default()
    }
}
pub(super) fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::FLOAT),
        f: Some(v),
        ..Default::default()
    }
}
pub(super) fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INTS),
        ints: v.to_vec(),
        ..Default::default()
    }
}

impl<'a> Builder<'a> {
    pub(super) fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.n += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.n);
        self.op_named(op, inputs, attrs, &out);
        out
    }

    pub(super) fn op_named(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        out: &str,
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: Some(format!("n{}_{}", self.nodes.len(), op)),
            op_type: Some(op.into()),
            attribute: attrs,
            domain: None,
        });
    }

    pub(super) fn const_f32(&mut self, v: &[f32], dims: &[i64]) -> String {
        self.n += 1;
        let name = format!("const_f_{}", self.n);
        self.inits.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(data_type::FLOAT),
            name: Some(name.clone()),
            raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        });
        name
    }

    pub(super) fn const_u8(&mut self, v: u8) -> String {
        self.n += 1;
        let name = format!("const_u8_{}", self.n);
        self.inits.push(TensorProto {
            dims: vec![],
            data_type: Some(data_type::UINT8),
            name: Some(name.clone()),
            raw_data: Some(vec![v]),
        });
        name
    }

    pub(super) fn const_i64(&mut self, v: &[i64], dims: &[i64]) -> String {
        self.n += 1;
        let name = format!("const_i_{}", self.n);
        self.inits.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(data_type::INT64),
            name: Some(name.clone()),
            raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        });
        name
    }

    /// The safetensors weight `name`, after checking its dtype and shape.
    pub(super) fn tensor(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<safetensors::tensor::TensorView<'a>> {
        let t = self
            .weights
            .iter()
            .find_map(|w| w.tensor(name).ok())
            .ok_or_else(|| ModelError::Weights(format!("missing weight {name}")))?;
        if t.dtype() != Dtype::F32 {
            return Err(ModelError::Weights(format!(
                "weight {name} has dtype {:?}, expected F32",
                t.dtype()
            )));
        }
        if t.shape() != shape {
            return Err(ModelError::Weights(format!(
                "weight {name} has shape {:?}, the config expects {:?}; the weights do not belong to this config",
                t.shape(),
                shape
            )));
        }
        Ok(t)
    }

    /// Adds the safetensors weight `name` as an initializer (once) after checking its shape.
    pub(super) fn weight(&mut self, name: &str, shape: &[usize]) -> Result<String> {
        if self.used.contains_key(name) {
            return Ok(name.to_string());
        }
        let t = self.tensor(name, shape)?;
        self.inits.push(TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: Some(data_type::FLOAT),
            name: Some(name.into()),
            raw_data: Some(t.data().to_vec()),
        });
        self.used.insert(name.into(), ());
        Ok(name.to_string())
    }

    /// `x · Wᵀ (+ b)` with `W` (`[out, in]`) quantised per output channel to int8 and the
    /// activations quantised per token ([`Self::quantise_input`]), except the layer's outlier
    /// input channels, which are multiplied in f32 and added.
    pub(super) fn matmul_int8(
        &mut self,
        x: &str,
        w_name: &str,
        bias: Option<&str>,
        out: usize,
        inp: usize,
    ) -> Result<String> {
        let t = self.tensor(w_name, &[out, inp])?;
        let mut w: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let kept: Vec<usize> = self
            .outliers
            .and_then(|o| o.get(w_name))
            .cloned()
            .unwrap_or_default();
        if let Some(&bad) = kept.iter().find(|&&c| c >= inp) {
            return Err(ModelError::Weights(format!(
                "outlier channel {bad} of {w_name} is out of range (the layer has {inp} inputs)"
            )));
        }
        // The outlier columns, `[k, out]`, multiplied in f32; zeroed in the quantised weight
        // so that they neither count twice nor widen its scales.
        let mut outlier_w = Vec::with_capacity(kept.len() * out);
        for &c in &kept {
            outlier_w.extend((0..out).map(|o| w[o * inp + c]));
        }
        for o in 0..out {
            for &c in &kept {
                w[o * inp + c] = 0.0;
            }
        }
        let (q, scales) = quantize_per_channel(&w, out, inp);
        self.used.insert(w_name.into(), ());
        let qname = format!("{w_name}.int8");
        self.inits.push(TensorProto {
            dims: vec![inp as i64, out as i64],
            data_type: Some(data_type::INT8),
            name: Some(qname.clone()),
            raw_data: Some(q.iter().map(|&v| v as u8).collect()),
        });
        let sname = format!("{w_name}.scale");
        self.inits.push(TensorProto {
            dims: vec![out as i64],
            data_type: Some(data_type::FLOAT),
            name: Some(sname.clone()),
            raw_data: Some(scales.iter().flat_map(|x| x.to_le_bytes()).collect()),
        });
        let xin = self.quantise_input(x, &kept, inp);
        let one = self.const_f32(&[1.0], &[]);
        let zp = self.const_u8(ACTIVATION_ZERO_POINT);
        // int32 products scaled per weight channel, then per row by a `Mul`. (ONNX Runtime
        // also takes the row scales as a non-scalar activation scale, but applies them on one
        // thread and to a bias passed in too: measured slower than the `Mul`.)
        self.n += 1;
        let y = format!("mmitf_{}", self.n);
        self.nodes.push(NodeProto {
            input: vec![xin.q.clone(), qname, one, sname, zp],
            output: vec![y.clone()],
            name: Some(format!("n{}_MatMulIntegerToFloat", self.nodes.len())),
            op_type: Some("MatMulIntegerToFloat".into()),
            domain: Some(MS_DOMAIN.into()),
            attribute: vec![],
        });
        let mut y = self.op("Mul", &[&y, &xin.scale], vec![]);
        if let Some(xo) = &xin.outliers {
            let ow = self.const_f32(&outlier_w, &[kept.len() as i64, out as i64]);
            let yo = self.op("MatMul", &[xo, &ow], vec![]);
            y = self.op("Add", &[&y, &yo], vec![]);
        }
        Ok(match bias {
            Some(b) => self.op("Add", &[&y, b], vec![]),
            None => y,
        })
    }

    /// Quantises `x` (`[.., in]`) per token row, symmetrically: each row's scale is its
    /// largest magnitude over 127 and the row is stored as `round(x / scale) + 128` (`uint8`,
    /// the activation type ONNX Runtime's integer kernels expect). One scale per row, not
    /// per tensor, is what makes a text's embedding independent of the texts batched with
    /// it; it is also closer to f32 (BENCHMARKS.md). The outlier channels `kept` are zeroed
    /// before the scale is taken and gathered apart.
    fn quantise_input(&mut self, x: &str, kept: &[usize], inp: usize) -> QuantisedInput {
        let key = (x.to_string(), kept.to_vec());
        if let Some(q) = self.quantised.get(&key) {
            return q.clone();
        }
        let (xm, outliers) = if kept.is_empty() {
            (x.to_string(), None)
        } else {
            let mut keep = vec![1f32; inp];
            let mut idx = Vec::with_capacity(kept.len());
            for &c in kept {
                keep[c] = 0.0;
                idx.push(c as i64);
            }
            let keep = self.const_f32(&keep, &[inp as i64]);
            let idx = self.const_i64(&idx, &[kept.len() as i64]);
            let xo = self.op("Gather", &[x, &idx], vec![attr_int("axis", -1)]);
            (self.op("Mul", &[x, &keep], vec![]), Some(xo))
        };
        let abs = self.op("Abs", &[&xm], vec![]);
        let amax = self.op(
            "ReduceMax",
            &[&abs],
            vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)],
        );
        // A row of zeros (or of outliers only) gets a tiny scale and quantises to zeros.
        let tiny = self.const_f32(&[1e-12], &[]);
        let amax = self.op("Max", &[&amax, &tiny], vec![]);
        let inv_qmax = self.const_f32(&[1.0 / INT8_ACTIVATION_MAX], &[]);
        let scale = self.op("Mul", &[&amax, &inv_qmax], vec![]);
        let qmax = self.const_f32(&[INT8_ACTIVATION_MAX], &[]);
        let inv = self.op("Div", &[&qmax, &amax], vec![]);
        let xs = self.op("Mul", &[&xm, &inv], vec![]);
        let one = self.const_f32(&[1.0], &[]);
        let zp = self.const_u8(ACTIVATION_ZERO_POINT);
        let q = self.op("QuantizeLinear", &[&xs, &one, &zp], vec![]);
        let out = QuantisedInput { q, scale, outliers };
        self.quantised.insert(key, out.clone());
        out
    }

    /// Records `x` as the input of the linear layer `w_name`, in probe graphs.
    pub(super) fn probe(&mut self, x: &str, w_name: &str) {
        if let Some(p) = &mut self.probes {
            p.push((w_name.to_string(), x.to_string()));
        }
    }

    /// `x · Wᵀ + b` for a Hugging Face `Linear` stored as `[out, in]`.
    pub(super) fn linear(
        &mut self,
        x: &str,
        prefix: &str,
        out: usize,
        inp: usize,
    ) -> Result<String> {
        let w_name = format!("{prefix}.weight");
        if self.precision == Precision::Int8 {
            let b = self.weight(&format!("{prefix}.bias"), &[out])?;
            return self.matmul_int8(x, &w_name, Some(&b), out, inp);
        }
        self.probe(x, &w_name);
        // Weight before bias: the initializer order is part of the graph's recorded sha256.
        let w = self.weight(&w_name, &[out, inp])?;
        let b = self.weight(&format!("{prefix}.bias"), &[out])?;
        let wt = self.op("Transpose", &[&w], vec![attr_ints("perm", &[1, 0])]);
        let y = self.op("MatMul", &[x, &wt], vec![]);
        Ok(self.op("Add", &[&y, &b], vec![]))
    }

    pub(super) fn layer_norm(
        &mut self,
        x: &str,
        prefix: &str,
        hidden: usize,
        eps: f64,
    ) -> Result<String> {
        let g = self.weight(&format!("{prefix}.weight"), &[hidden])?;
        let b = self.weight(&format!("{prefix}.bias"), &[hidden])?;
        Ok(self.op(
            "LayerNormalization",
            &[x, &g, &b],
            vec![attr_int("axis", -1), attr_float("epsilon", eps as f32)],
        ))
    }
}

pub(super) fn tensor_value(name: &str, elem: i32, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Ok(v) => Dimension {
                                dim_value: Some(*v),
                                dim_param: None,
                            },
                            Err(p) => Dimension {
                                dim_value: None,
                                dim_param: Some(p.to_string()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
    }
}
