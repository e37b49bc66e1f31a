//! Writes the encoder's ONNX graph from a BERT configuration and safetensors weights.
//!
//! Every initializer keeps its safetensors name and layout (linear weights stay `[out, in]`
//! and are transposed by a `Transpose` node that ONNX Runtime folds at load time), so new
//! weights from the trainer are written by building the graph again from the new file.
//!
//! Inputs: `input_ids` and `attention_mask`, both `int64 [batch, seq]`.
//! Outputs: `token_embeddings` (`float [batch, seq, hidden]`, last hidden state),
//! `sentence_embedding` (`float [batch, hidden]`, masked mean, L2-normalised), and
//! `hidden_state_1` … `hidden_state_{L-1}` (`float [batch, seq, hidden]`, the output of each
//! earlier layer: the mention tagger reads some of them, see
//! [`crate::mentions::MentionSpec::layers`]).

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use safetensors::SafeTensors;
use serde::Deserialize;

use super::onnx_proto::*;
use crate::error::{ModelError, Result};

mod builder;

use builder::{attr_int, attr_ints, tensor_value, Builder};

/// Opset the graph is written for (`LayerNormalization` needs 17).
pub const OPSET: i64 = 17;
/// Name of the token-embeddings output.
pub const OUTPUT_TOKENS: &str = "token_embeddings";
/// Name of the pooled-embedding output.
pub const OUTPUT_POOLED: &str = "sentence_embedding";

/// Name of the output holding layer `layer`'s hidden states (1-based; the last layer's are
/// [`OUTPUT_TOKENS`]).
pub fn output_hidden(layer: usize) -> String {
    format!("hidden_state_{layer}")
}

/// The fields of a Hugging Face BERT `config.json` that shape the graph.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct BertConfig {
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Position-embedding rows: the hard limit on sequence length.
    pub max_position_embeddings: usize,
    /// Vocabulary rows.
    pub vocab_size: usize,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Activation; only `gelu` (erf form) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

/// Domain of ONNX Runtime's contrib operators (`MatMulIntegerToFloat`).
pub const MS_DOMAIN: &str = "com.microsoft";

/// Numeric precision of the linear layers of a written graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Every weight in f32.
    #[default]
    F32,
    /// Linear-layer weights in int8, one scale per output channel, activations quantised
    /// dynamically with one scale per token; embeddings, layer norms, attention and pooling
    /// stay f32.
    Int8,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        })
    }
}

/// Input channels of each linear layer that the int8 graph keeps in f32, by the layer's
/// weight name (`encoder.layer.0.intermediate.dense.weight`, ...).
///
/// BERT's activations have a few channels an order of magnitude larger than the rest (in
/// MiniLM, channel 99 of every feed-forward input reaches about 30 where the median channel
/// reaches 2), in nearly every token. Each token's activations are quantised with one scale,
/// so those channels would set the step for all the others; multiplying them apart in f32
/// (a `Gather` and a `[k, out]` product) keeps the step of the rest small
/// ([`choose_outliers`]).
pub type OutlierChannels = BTreeMap<String, Vec<usize>>;

/// What [`build_bert_onnx`] writes.
#[derive(Debug, Clone, Copy)]
pub enum GraphVariant<'o> {
    /// Every weight in f32: the served f32 graph.
    F32,
    /// The f32 graph with each linear layer's input as an extra output, named
    /// `probe:<weight name>`, for measuring activation ranges ([`crate::model::calibrate`]).
    Probe,
    /// Linear layers quantised to int8, the given input channels of each kept in f32.
    Int8(&'o OutlierChannels),
}

impl GraphVariant<'_> {
    fn precision(self) -> Precision {
        match self {
            GraphVariant::F32 | GraphVariant::Probe => Precision::F32,
            GraphVariant::Int8(_) => Precision::Int8,
        }
    }
}

/// Prefix of the probe graph's extra outputs; the weight name follows.
pub const PROBE_PREFIX: &str = "probe:";

/// A channel is an outlier when its largest magnitude is over this many times the median
/// channel's.
pub const OUTLIER_RATIO: f32 = 3.0;
/// At most this many outlier channels per linear layer, the largest first.
pub const MAX_OUTLIERS: usize = 8;

/// The input channels of one linear layer to keep in f32, from the largest magnitude each
/// channel reached on calibration texts: those over [`OUTLIER_RATIO`] times the median, at
/// most [`MAX_OUTLIERS`], in ascending order.
pub fn choose_outliers(absmax: &[f32]) -> Vec<usize> {
    if absmax.is_empty() {
        return vec![];
    }
    let mut sorted = absmax.to_vec();
    sorted.sort_by(f32::total_cmp);
    let median = sorted[sorted.len() / 2];
    let mut idx: Vec<usize> = (0..absmax.len())
        .filter(|&i| absmax[i] > OUTLIER_RATIO * median)
        .collect();
    idx.sort_by(|&a, &b| absmax[b].total_cmp(&absmax[a]));
    idx.truncate(MAX_OUTLIERS);
    idx.sort_unstable();
    idx
}

/// Largest magnitude of a quantised weight: the full signed range less -128, so the range
/// is symmetric. (Seven bits, ONNX Runtime's `reduce_range`, would rule out the 16-bit
/// saturation of `vpmaddubsw` on x86 CPUs without VNNI, but measured here it cost about 3
/// MAP on the skill dev sets against under 1 for eight bits; see BENCHMARKS.md.)
pub const INT8_WEIGHT_MAX: f32 = 127.0;

/// Largest magnitude of a quantised activation (symmetric, as the weights).
pub const INT8_ACTIVATION_MAX: f32 = 127.0;
/// Zero point of the `uint8` activations: symmetric values `-127..=127` stored as `1..=255`.
pub const ACTIVATION_ZERO_POINT: u8 = 128;

/// Quantises a `[out, in]` weight symmetrically per output channel, transposed to the
/// `[in, out]` layout `MatMulIntegerToFloat` multiplies by. Returns the weights and one
/// scale per output channel (`w ≈ q · scale`).
pub fn quantize_per_channel(w: &[f32], out: usize, inp: usize) -> (Vec<i8>, Vec<f32>) {
    debug_assert_eq!(w.len(), out * inp);
    let mut q = vec![0i8; out * inp];
    let mut scales = Vec::with_capacity(out);
    for o in 0..out {
        let row = &w[o * inp..(o + 1) * inp];
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 {
            max / INT8_WEIGHT_MAX
        } else {
            1.0
        };
        for (i, v) in row.iter().enumerate() {
            q[i * out + o] = (v / scale).round().clamp(-INT8_WEIGHT_MAX, INT8_WEIGHT_MAX) as i8;
        }
        scales.push(scale);
    }
    (q, scales)
}

/// Name of the optional projection head's weight (`[hidden, hidden]`, applied as `x · Wᵀ`
/// to every token state before pooling), written by `uwe-trainer`.
pub const HEAD_WEIGHT: &str = "head.weight";

/// Builds the encoder graph and returns the serialised ONNX model. `trained` weights take
/// the place of the base `weights` of the same names; when they hold [`HEAD_WEIGHT`], the
/// projection head is applied to the last hidden states. With [`GraphVariant::Int8`] the
/// linear layers (and the head) are written quantised; the graph then needs ONNX Runtime's
/// CPU contrib operators.
pub fn build_bert_onnx(
    cfg: &BertConfig,
    weights: &SafeTensors<'_>,
    trained: Option<&SafeTensors<'_>>,
    variant: GraphVariant<'_>,
) -> Result<Vec<u8>> {
    let precision = variant.precision();
    if cfg.hidden_act != "gelu" {
        return Err(ModelError::Weights(format!(
            "hidden_act {:?} is not supported (only gelu)",
            cfg.hidden_act
        )));
    }
    if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(ModelError::Weights(format!(
            "hidden_size {} is not divisible by num_attention_heads {}",
            cfg.hidden_size, cfg.num_attention_heads
        )));
    }
    let h = cfg.hidden_size;
    let heads = cfg.num_attention_heads as i64;
    let head_dim = (h / cfg.num_attention_heads) as i64;
    let mut b = Builder {
        nodes: vec![],
        inits: vec![],
        // Looked up in order: the trained weights win.
        weights: trained
            .into_iter()
            .chain(std::iter::once(weights))
            .collect(),
        used: HashMap::new(),
        n: 0,
        precision,
        outliers: match variant {
            GraphVariant::Int8(o) => Some(o),
            _ => None,
        },
        probes: matches!(variant, GraphVariant::Probe).then(Vec::new),
        quantised: HashMap::new(),
    };

    // Embeddings: word + position(0..seq) + token type 0, then layer norm.
    let word = b.weight("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
    let pos = b.weight(
        "embeddings.position_embeddings.weight",
        &[cfg.max_position_embeddings, h],
    )?;
    let typ = b.weight("embeddings.token_type_embeddings.weight", &[2, h])?;
    let we = b.op("Gather", &[&word, "input_ids"], vec![attr_int("axis", 0)]);
    let shape = b.op("Shape", &["input_ids"], vec![]);
    let one_idx = b.const_i64(&[1], &[]);
    let seq = b.op("Gather", &[&shape, &one_idx], vec![attr_int("axis", 0)]);
    let zero = b.const_i64(&[0], &[]);
    let step = b.const_i64(&[1], &[]);
    let range = b.op("Range", &[&zero, &seq, &step], vec![]);
    let pe = b.op("Gather", &[&pos, &range], vec![attr_int("axis", 0)]);
    let zero_idx = b.const_i64(&[0], &[]);
    let te = b.op("Gather", &[&typ, &zero_idx], vec![attr_int("axis", 0)]);
    let e1 = b.op("Add", &[&we, &pe], vec![]);
    let e2 = b.op("Add", &[&e1, &te], vec![]);
    let mut x = b.layer_norm(&e2, "embeddings.LayerNorm", h, cfg.layer_norm_eps)?;

    // Additive attention bias: 0 where attended, f32::MIN where padded, shape [b, 1, 1, s].
    let mask_f = b.op(
        "Cast",
        &["attention_mask"],
        vec![attr_int("to", data_type::FLOAT as i64)],
    );
    let axes12 = b.const_i64(&[1, 2], &[2]);
    let ext = b.op("Unsqueeze", &[&mask_f, &axes12], vec![]);
    let one_f = b.const_f32(&[1.0], &[]);
    let inv = b.op("Sub", &[&one_f, &ext], vec![]);
    let minf = b.const_f32(&[f32::MIN], &[]);
    let bias = b.op("Mul", &[&inv, &minf], vec![]);

    let split_shape = b.const_i64(&[0, 0, heads, head_dim], &[4]);
    let merge_shape = b.const_i64(&[0, 0, h as i64], &[3]);
    let scale = b.const_f32(&[1.0 / (head_dim as f32).sqrt()], &[]);
    let half = b.const_f32(&[0.5], &[]);
    let sqrt2 = b.const_f32(&[std::f32::consts::SQRT_2], &[]);

    let mut hidden_outputs = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        if l > 0 {
            // The previous layer's output: features of the mention tagger.
            let name = output_hidden(l);
            b.op_named("Identity", &[&x], vec![], &name);
            hidden_outputs.push(name);
        }
        let p = format!("encoder.layer.{l}");
        let q = b.linear(&x, &format!("{p}.attention.self.query"), h, h)?;
        let k = b.linear(&x, &format!("{p}.attention.self.key"), h, h)?;
        let v = b.linear(&x, &format!("{p}.attention.self.value"), h, h)?;
        let q = b.op("Reshape", &[&q, &split_shape], vec![]);
        let q = b.op("Transpose", &[&q], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let k = b.op("Reshape", &[&k, &split_shape], vec![]);
        let k = b.op("Transpose", &[&k], vec![attr_ints("perm", &[0, 2, 3, 1])]);
        let v = b.op("Reshape", &[&v, &split_shape], vec![]);
        let v = b.op("Transpose", &[&v], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let s = b.op("MatMul", &[&q, &k], vec![]);
        let s = b.op("Mul", &[&s, &scale], vec![]);
        let s = b.op("Add", &[&s, &bias], vec![]);
        let pr = b.op("Softmax", &[&s], vec![attr_int("axis", -1)]);
        let ctx = b.op("MatMul", &[&pr, &v], vec![]);
        let ctx = b.op("Transpose", &[&ctx], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let ctx = b.op("Reshape", &[&ctx, &merge_shape], vec![]);
        let ao = b.linear(&ctx, &format!("{p}.attention.output.dense"), h, h)?;
        let ao = b.op("Add", &[&ao, &x], vec![]);
        let ao = b.layer_norm(
            &ao,
            &format!("{p}.attention.output.LayerNorm"),
            h,
            cfg.layer_norm_eps,
        )?;
        let it = b.linear(
            &ao,
            &format!("{p}.intermediate.dense"),
            cfg.intermediate_size,
            h,
        )?;
        // gelu(x) = 0.5 · x · (1 + erf(x / √2))
        let d = b.op("Div", &[&it, &sqrt2], vec![]);
        let erf = b.op("Erf", &[&d], vec![]);
        let e1 = b.op("Add", &[&erf, &one_f], vec![]);
        let xh = b.op("Mul", &[&it, &half], vec![]);
        let g = b.op("Mul", &[&xh, &e1], vec![]);
        let o = b.linear(&g, &format!("{p}.output.dense"), h, cfg.intermediate_size)?;
        let o = b.op("Add", &[&o, &ao], vec![]);
        x = b.layer_norm(&o, &format!("{p}.output.LayerNorm"), h, cfg.layer_norm_eps)?;
    }
    if trained.is_some_and(|t| t.tensor(HEAD_WEIGHT).is_ok()) {
        x = if precision == Precision::Int8 {
            b.matmul_int8(&x, HEAD_WEIGHT, None, h, h)?
        } else {
            b.probe(&x, HEAD_WEIGHT);
            let w = b.weight(HEAD_WEIGHT, &[h, h])?;
            let wt = b.op("Transpose", &[&w], vec![attr_ints("perm", &[1, 0])]);
            b.op("MatMul", &[&x, &wt], vec![])
        };
    }
    // A trained weight the graph never reads would be silently lost: refuse it.
    if let Some(t) = trained {
        let mut unused: Vec<String> = t
            .names()
            .into_iter()
            .filter(|n| !b.used.contains_key(*n))
            .map(str::to_string)
            .collect();
        if !unused.is_empty() {
            unused.sort();
            return Err(ModelError::Weights(format!(
                "trained weights {unused:?} are not part of a {}-layer model with this config; were they trained for another base model?",
                cfg.num_hidden_layers
            )));
        }
    }
    b.op_named("Identity", &[&x], vec![], OUTPUT_TOKENS);

    // Masked mean pooling, then L2 normalisation.
    let axis2 = b.const_i64(&[2], &[1]);
    let m3 = b.op("Unsqueeze", &[&mask_f, &axis2], vec![]);
    let masked = b.op("Mul", &[&x, &m3], vec![]);
    let axis1 = b.const_i64(&[1], &[1]);
    let sum = b.op(
        "ReduceSum",
        &[&masked, &axis1],
        vec![attr_int("keepdims", 0)],
    );
    let cnt = b.op("ReduceSum", &[&m3, &axis1], vec![attr_int("keepdims", 0)]);
    let tiny = b.const_f32(&[1e-9], &[]);
    let cnt = b.op("Max", &[&cnt, &tiny], vec![]);
    let mean = b.op("Div", &[&sum, &cnt], vec![]);
    let norm = b.op(
        "ReduceL2",
        &[&mean],
        vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
    );
    let eps = b.const_f32(&[1e-12], &[]);
    let norm = b.op("Max", &[&norm, &eps], vec![]);
    b.op_named("Div", &[&mean, &norm], vec![], OUTPUT_POOLED);

    let mut opset_import = vec![OperatorSetIdProto {
        domain: Some(String::new()),
        version: Some(OPSET),
    }];
    if precision == Precision::Int8 {
        opset_import.push(OperatorSetIdProto {
            domain: Some(MS_DOMAIN.into()),
            version: Some(1),
        });
    }
    let mut outputs = vec![
        tensor_value(
            OUTPUT_TOKENS,
            data_type::FLOAT,
            &[Err("batch"), Err("seq"), Ok(h as i64)],
        ),
        tensor_value(
            OUTPUT_POOLED,
            data_type::FLOAT,
            &[Err("batch"), Ok(h as i64)],
        ),
    ];
    for name in &hidden_outputs {
        outputs.push(tensor_value(
            name,
            data_type::FLOAT,
            &[Err("batch"), Err("seq"), Ok(h as i64)],
        ));
    }
    for (weight, value) in b.probes.take().unwrap_or_default() {
        let out = format!("{PROBE_PREFIX}{weight}");
        b.op_named("Identity", &[&value], vec![], &out);
        outputs.push(tensor_value(
            &out,
            data_type::FLOAT,
            &[Err("batch"), Err("seq"), Err("in")],
        ));
    }
    let model = ModelProto {
        ir_version: Some(8),
        opset_import,
        producer_name: Some("uwe-connect".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(
            "BERT bi-encoder: token embeddings and mean-pooled L2-normalised embedding".into(),
        ),
        graph: Some(GraphProto {
            node: b.nodes,
            name: Some("uwe_encoder".into()),
            initializer: b.inits,
            input: vec![
                tensor_value("input_ids", data_type::INT64, &[Err("batch"), Err("seq")]),
                tensor_value(
                    "attention_mask",
                    data_type::INT64,
                    &[Err("batch"), Err("seq")],
                ),
            ],
            output: outputs,
        }),
        metadata_props: vec![],
    };
    Ok(model.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_quantisation_is_transposed_and_within_half_a_step() {
        // Two output channels of very different range, three inputs.
        let w = [0.5f32, -1.0, 0.25, 0.001, 0.002, -0.003];
        let (q, s) = quantize_per_channel(&w, 2, 3);
        assert_eq!(q.len(), 6);
        assert_eq!(s.len(), 2);
        for o in 0..2 {
            for i in 0..3 {
                let back = q[i * 2 + o] as f32 * s[o];
                assert!(
                    (back - w[o * 3 + i]).abs() <= s[o] / 2.0 + 1e-9,
                    "channel {o} input {i}: {back} vs {}",
                    w[o * 3 + i]
                );
            }
        }
        // Each channel's largest weight uses the full range.
        assert_eq!(q[2], -127);
        assert_eq!(q[2 * 2 + 1], -127);
    }

    #[test]
    fn an_all_zero_channel_gets_a_usable_scale() {
        let (q, s) = quantize_per_channel(&[0.0, 0.0, 1.0, -1.0], 2, 2);
        assert!(s[0] > 0.0 && s[0].is_finite());
        assert_eq!((q[0], q[2]), (0, 0));
        assert_eq!((q[1], q[3]), (127, -127));
    }

    #[test]
    fn outliers_are_the_few_channels_far_above_the_median() {
        // Channel 3 is 15x the median, channel 0 exactly 3x (not over), channel 5 4x.
        let a = [3.0f32, 1.0, 0.9, 15.0, 1.1, 4.0, 1.0];
        assert_eq!(choose_outliers(&a), vec![3, 5]);
        assert!(
            choose_outliers(&[1.0; 16]).is_empty(),
            "a flat layer has none"
        );
        assert!(choose_outliers(&[]).is_empty());
        // Many outliers: only the largest MAX_OUTLIERS, returned in channel order.
        let mut many = vec![1.0f32; 64];
        for (k, c) in (0..MAX_OUTLIERS + 4).enumerate() {
            many[c * 5] = 10.0 + k as f32;
        }
        let got = choose_outliers(&many);
        assert_eq!(got.len(), MAX_OUTLIERS);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert!(!got.contains(&0) && got.contains(&((MAX_OUTLIERS + 3) * 5)));
    }
}
