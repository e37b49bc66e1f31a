//! ONNX Runtime: loading the shared library once per process and building sessions.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::{builder::GraphOptimizationLevel, Session};
use serde::{Deserialize, Serialize};

use super::EncoderConfig;
use crate::error::{ModelError, Result};

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

/// Builds a session for the ONNX file at `path` on the configured device, returning the
/// device actually used.
pub fn build_session(path: &Path, cfg: &EncoderConfig) -> Result<(Session, Device)> {
    let env = environment(cfg)?;
    let threads = if cfg.intra_threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        cfg.intra_threads
    };
    let load_err = |e: ort::Error| {
        ModelError::Runtime(format!(
            "{}: cannot load the model: {e}. The file may be corrupt: rebuild the model directory",
            path.display()
        ))
    };
    match cfg.device {
        Device::Cpu => Ok((session(env, path, threads, false).map_err(load_err)?, Device::Cpu)),
        Device::Cuda => match session(env, path, threads, true) {
            Ok(s) => Ok((s, Device::Cuda)),
            Err(e) => Err(ModelError::Device(format!(
                "device = \"cuda\" but the CUDA execution provider could not start: {e}. Use the onnxruntime-gpu library (ORT_DYLIB_PATH) with CUDA 13 and cuDNN 9, or set device = \"auto\""
            ))),
        },
        Device::Auto => match session(env, path, threads, true) {
            Ok(s) => Ok((s, Device::Cuda)),
            Err(e) => {
                tracing::warn!(error = %e, "CUDA unavailable, running on CPU");
                Ok((session(env, path, threads, false).map_err(load_err)?, Device::Cpu))
            }
        },
    }
}
