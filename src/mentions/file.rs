//! The head's file: reading it from a model directory (checked against the manifest's
//! entry) and writing it as safetensors.

use std::path::Path;

use super::{MentionHead, MentionSpec, B1, B2, GATE_B, GATE_W, N_LOGITS, W1, W2};
use crate::error::{ModelError, Result};

impl MentionHead {
    /// Loads the head a manifest names from the model directory `dir`.
    pub fn load(dir: &Path, spec: &MentionSpec, dim: usize) -> Result<Self> {
        let path = dir.join(&spec.file);
        let bytes = std::fs::read(&path).map_err(ModelError::io(&path))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            ModelError::Weights(format!("{}: not a safetensors file: {e}", path.display()))
        })?;
        let get = |name: &str| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|e| ModelError::Weights(format!("{}: {name}: {e}", path.display())))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(ModelError::Weights(format!(
                    "{}: {name} is {:?}, expected F32",
                    path.display(),
                    t.dtype()
                )));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let mut h = MentionHead::new(
            dim,
            spec.layers.len(),
            spec.hidden,
            get(W1)?,
            get(B1)?,
            get(W2)?,
            get(B2)?,
        )
        .map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))?;
        if h.sentence != spec.sentence_context {
            return Err(ModelError::Weights(format!(
                "{}: the weights {} the sentence embedding but the manifest says \
                 sentence_context = {}: retrain the tagger with `uwe-trainer mentions`",
                path.display(),
                if h.sentence { "read" } else { "do not read" },
                spec.sentence_context
            )));
        }
        if h.context != spec.context {
            return Err(ModelError::Weights(format!(
                "{}: the weights read {} neighbours either side of a token but the manifest \
                 says context = {}: retrain the tagger with `uwe-trainer mentions`",
                path.display(),
                h.context,
                spec.context
            )));
        }
        if st.names().contains(&GATE_W) {
            let (w, b) = (get(GATE_W)?, get(GATE_B)?);
            if w.len() != dim || b.len() != 1 {
                return Err(ModelError::Weights(format!(
                    "{}: the sentence gate has {} weights and {} biases, expected {dim} and 1: \
                     retrain the tagger with `uwe-trainer mentions`",
                    path.display(),
                    w.len(),
                    b.len()
                )));
            }
            h.gate = Some((w, b[0]));
        }
        if let Some(g) = spec.sentence_gate {
            if h.gate.is_none() {
                return Err(ModelError::Weights(format!(
                    "{}: the manifest sets sentence_gate = {g} but the file holds no gate: \
                     retrain the tagger with `uwe-trainer mentions`",
                    path.display()
                )));
            }
            h.gate_threshold = g;
        }
        h.threshold = spec.threshold;
        h.knowledge_threshold = spec.knowledge_threshold.unwrap_or(spec.threshold);
        h.label_threshold = spec.label_threshold;
        Ok(h)
    }

    /// The weights as named f32 tensors `(name, shape, values)`, for writing.
    pub fn tensors(&self) -> Vec<(&'static str, Vec<usize>, &[f32])> {
        let width = Self::feature_width(self.dim, self.layers, self.context, self.sentence);
        let mut v = vec![
            (W1, vec![width, self.hidden], &self.w1[..]),
            (B1, vec![self.hidden], &self.b1[..]),
            (W2, vec![self.hidden, N_LOGITS], &self.w2[..]),
            (B2, vec![N_LOGITS], &self.b2[..]),
        ];
        if let Some((w, b)) = &self.gate {
            v.push((GATE_W, vec![self.dim], &w[..]));
            v.push((GATE_B, vec![1], std::slice::from_ref(b)));
        }
        v
    }
}

/// Writes `head` as safetensors bytes.
pub fn to_safetensors(head: &MentionHead) -> Result<Vec<u8>> {
    let tensors = head.tensors();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let bytes: &[u8] = bytemuck::cast_slice(data);
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.to_string(), v))
                .map_err(|e| ModelError::Weights(format!("{name}: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| ModelError::Weights(e.to_string()))
}
