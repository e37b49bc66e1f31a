//! ONNX Runtime: loading the shared library once per process and building sessions.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::{builder::GraphOptimizationLevel, Session};
use serde::{Deserialize, Serialize};

use super::EncoderConfig;
use crate::error::{ModelError, Result};
use crate::model::{ModelDir, Precision};

/// Where inference runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when it starts, else CPU with a warning.
    #[default]
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA or a clear error.
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(format!("unknown device {other:?}: use auto, cpu or cuda")),
        }
    }
}

/// Which graph of a model directory the encoder serves (`encoder.precision`).
///
/// The default is `auto`: the int8 graph on CPU, about 1.7× the f32 records/s and within
/// the bootstrap noise of f32 on the pooled dev sets. Its activations are quantised with one
/// scale per token, so a text's embedding, and so its labels, do not depend on the texts it
/// is batched with (BENCHMARKS.md, "int8"). CUDA serves f32.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionChoice {
    /// The int8 graph on CPU when the model has one, f32 otherwise and on CUDA.
    #[default]
    Auto,
    /// Always the f32 graph.
    F32,
    /// The int8 graph (CPU only), or a clear error when the model has none.
    Int8,
}

impl std::str::FromStr for PrecisionChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(PrecisionChoice::Auto),
            "f32" => Ok(PrecisionChoice::F32),
            "int8" => Ok(PrecisionChoice::Int8),
            other => Err(format!(
                "unknown precision {other:?}: use auto, f32 or int8"
            )),
        }
    }
}

impl PrecisionChoice {
    /// The precision served on CPU for `model`.
    fn on_cpu(self, model: &ModelDir) -> Result<Precision> {
        let has_int8 = model.manifest.int8.is_some();
        match self {
            PrecisionChoice::Auto if has_int8 => Ok(Precision::Int8),
            PrecisionChoice::Auto | PrecisionChoice::F32 => Ok(Precision::F32),
            PrecisionChoice::Int8 if has_int8 => Ok(Precision::Int8),
            PrecisionChoice::Int8 => Err(ModelError::Manifest {
                path: model.path.join(crate::model::MANIFEST_FILE),
                msg: "encoder.precision = \"int8\" but the model has no int8 graph; rebuild it with `uwe-connect build-model --quantize int8`, or set precision = \"auto\"".into(),
            }),
        }
    }
}

static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

/// Default location of the ONNX Runtime library, as the setup command installs it.
pub const DEFAULT_ORT_LIB: &str = ".uwe/lib/libonnxruntime.so";

/// Resolves the ONNX Runtime library: the config, then `ORT_DYLIB_PATH`, then `.uwe/lib/`
/// in the working directory, then `.uwe/lib/` above the executable.
pub fn ort_library(cfg: &EncoderConfig) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = &cfg.onnxruntime {
        candidates.push(p.clone());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from(DEFAULT_ORT_LIB));
    if let Ok(exe) = std::env::current_exe() {
        for anc in exe.ancestors().skip(1).take(4) {
            candidates.push(anc.join(DEFAULT_ORT_LIB));
        }
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(ModelError::Runtime(format!(
        "ONNX Runtime library not found (tried {}); run `scripts/setup` or set ORT_DYLIB_PATH to libonnxruntime.so",
        tried.join(", ")
    )))
}

fn environment(cfg: &EncoderConfig) -> Result<&'static ort::environment::Environment> {
    let lib = ort_library(cfg)?;
    ENV.get_or_init(|| {
        let b = ort::init_from(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
        b.with_name("uwe-connect")
            .build()
            .map_err(|e| format!("{}: {e}", lib.display()))
    })
    .as_ref()
    .map_err(|e| ModelError::Runtime(format!("cannot load ONNX Runtime from {e}")))
}

fn session(
    env: &ort::environment::Environment,
    path: &Path,
    threads: usize,
    cuda: bool,
) -> ort::Result<Session> {
    let mut b = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(threads)?
        .with_intra_op_spinning(false)?
        .with_inter_op_spinning(false)?;
    if cuda {
        b = b.with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])?;
    }
    b.commit_from_file(path)
}

/// ONNX Runtime's intra-op threads for `cfg`: one per core when it says 0.
fn intra_threads(cfg: &EncoderConfig) -> usize {
    match cfg.intra_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// A CPU session for a graph held in memory (the calibration probe of
/// [`crate::model::calibrate`]), with the ONNX Runtime library `cfg` resolves.
pub(crate) fn cpu_session_from_memory(bytes: &[u8], cfg: &EncoderConfig) -> Result<Session> {
    let env = environment(cfg)?;
    let threads = intra_threads(cfg);
    let build = || -> ort::Result<Session> {
        Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)?
            .with_intra_threads(threads)?
            .commit_from_memory(bytes)
    };
    build().map_err(|e| ModelError::Runtime(format!("cannot load the calibration graph: {e}")))
}

/// Builds a session for `model` on the configured device and precision, returning the
/// device and precision actually used. CUDA always runs the f32 graph: the int8 graph's
/// operators have CPU kernels only.
pub fn build_session(
    model: &ModelDir,
    cfg: &EncoderConfig,
) -> Result<(Session, Device, Precision)> {
    let env = environment(cfg)?;
    let threads = intra_threads(cfg);
    let load_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: ort::Error| {
            ModelError::Runtime(format!(
                "{}: cannot load the model: {e}. The file may be corrupt: rebuild the model directory",
                path.display()
            ))
        }
    };
    let cpu = || -> Result<(Session, Device, Precision)> {
        let p = cfg.precision.on_cpu(model)?;
        let path = model
            .graph_path(p)
            .expect("on_cpu checked the graph exists");
        let s = session(env, &path, threads, false).map_err(load_err(&path))?;
        Ok((s, Device::Cpu, p))
    };
    let f32_path = model.onnx_path();
    match cfg.device {
        Device::Cpu => cpu(),
        Device::Cuda if cfg.precision == PrecisionChoice::Int8 => Err(ModelError::Device(
            "device = \"cuda\" with precision = \"int8\": the int8 graph runs on CPU only; set precision = \"auto\" or \"f32\"".into(),
        )),
        Device::Cuda => match session(env, &f32_path, threads, true) {
            Ok(s) => Ok((s, Device::Cuda, Precision::F32)),
            Err(e) => Err(ModelError::Device(format!(
                "device = \"cuda\" but the CUDA execution provider could not start: {e}. Use the onnxruntime-gpu library (ORT_DYLIB_PATH) with CUDA 13 and cuDNN 9, or set device = \"auto\""
            ))),
        },
        // An explicit int8 choice is a CPU choice.
        Device::Auto if cfg.precision == PrecisionChoice::Int8 => cpu(),
        Device::Auto => match session(env, &f32_path, threads, true) {
            Ok(s) => Ok((s, Device::Cuda, Precision::F32)),
            Err(e) => {
                tracing::warn!(error = %e, "CUDA unavailable, running on CPU");
                cpu()
            }
        },
    }
}
