//! Shared helpers of the integration tests: the real model built by `scripts/setup`.
#![allow(dead_code)]

use std::path::PathBuf;

use uwe_connect::encoder::{Device, Encoder, EncoderConfig};
use uwe_connect::model::ModelDir;

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The base model directory written by `scripts/setup`.
pub fn base_model_dir() -> PathBuf {
    std::env::var_os("UWE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/base"))
}

/// Encoder settings for tests: CPU, ONNX Runtime from `.uwe/lib`.
pub fn cpu_config() -> EncoderConfig {
    EncoderConfig {
        device: Device::Cpu,
        onnxruntime: Some(root().join(".uwe/lib/libonnxruntime.so")),
        ..Default::default()
    }
}

/// Opens the base model; panics with the fix when setup has not run.
pub fn open_base() -> ModelDir {
    ModelDir::open(&base_model_dir()).unwrap_or_else(|e| {
        panic!("{e}\nThe integration tests need the real model: run scripts/setup first")
    })
}

/// A CPU encoder over the base model.
pub fn base_encoder() -> Encoder {
    Encoder::load(&open_base(), &cpu_config()).expect("load encoder")
}
