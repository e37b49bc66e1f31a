//! Calibration of the int8 graph: which input channels of each linear layer carry activation
//! outliers, measured by running the f32 graph on job-ad texts.
//!
//! The probe graph ([`GraphVariant::Probe`]) is the f32 graph with every linear layer's input
//! as an extra output. Each calibration text runs alone (no padding, so every row is a real
//! token), and each channel's largest magnitude over all texts picks the outliers
//! ([`graph::choose_outliers`]).

use std::collections::BTreeMap;

use safetensors::SafeTensors;

use super::graph::{self, BertConfig, GraphVariant, OutlierChannels, PROBE_PREFIX};
use crate::encoder::{runtime, EncoderConfig};
use crate::error::{ModelError, Result};

/// The calibration texts built into the binary (`data/calibration/int8.txt`): 384 SkillSpan
/// training sentences, 96 ESCO skill and 32 ESCO occupation labels, one per line: the two
/// kinds of text the encoder sees, from no evaluation set.
pub const SHIPPED_TEXTS: &str = include_str!("../../data/calibration/int8.txt");

/// The outlier channels of every linear layer of the graph `weights` (and `trained`) build,
/// measured on `texts`, each tokenised by `tokenizer` (a `tokenizer.json`'s bytes) and cut to
/// `max_seq_len` tokens.
pub fn outlier_channels(
    cfg: &BertConfig,
    weights: &SafeTensors<'_>,
    trained: Option<&SafeTensors<'_>>,
    tokenizer: &[u8],
    max_seq_len: usize,
    texts: &[&str],
) -> Result<OutlierChannels> {
    let probe = graph::build_bert_onnx(cfg, weights, trained, GraphVariant::Probe)?;
    let mut tok = tokenizers::Tokenizer::from_bytes(tokenizer)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    tok.with_padding(None);
    tok.with_truncation(Some(tokenizers::TruncationParams {
        max_length: max_seq_len,
        ..Default::default()
    }))
    .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let mut session = runtime::cpu_session_from_memory(&probe, &EncoderConfig::default())?;
    let rt = |e: ort::Error| ModelError::Runtime(format!("calibration run: {e}"));
    let mut absmax: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for text in texts.iter().filter(|t| !t.trim().is_empty()) {
        let enc = tok
            .encode(*text, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        let shape = vec![1i64, ids.len() as i64];
        let ids_t = ort::value::Tensor::from_array((shape.clone(), ids.clone())).map_err(rt)?;
        let mask_t = ort::value::Tensor::from_array((shape, vec![1i64; ids.len()])).map_err(rt)?;
        let outputs = session
            .run(ort::inputs!["input_ids" => ids_t, "attention_mask" => mask_t])
            .map_err(rt)?;
        for (name, value) in outputs.iter() {
            let Some(weight) = name.strip_prefix(PROBE_PREFIX) else {
                continue;
            };
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(rt)?;
            let width = *shape.last().unwrap_or(&0) as usize;
            let m = absmax
                .entry(weight.to_string())
                .or_insert_with(|| vec![0.0; width]);
            for row in data.chunks_exact(width.max(1)) {
                for (a, v) in m.iter_mut().zip(row) {
                    *a = a.max(v.abs());
                }
            }
        }
    }
    if absmax.is_empty() {
        return Err(ModelError::Invalid(
            "no calibration text: the int8 graph needs at least one non-empty text".into(),
        ));
    }
    Ok(absmax
        .into_iter()
        .map(|(w, a)| (w, graph::choose_outliers(&a)))
        .filter(|(_, c)| !c.is_empty())
        .collect())
}
