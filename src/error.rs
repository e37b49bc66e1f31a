//! Error domains shared by every stage.
//!
//! Each error carries an [`ErrorClass`] that tells the pipeline what to do with it:
//! dead-letter the record, retry with backoff, or shut down cleanly.

use std::path::PathBuf;

/// What the pipeline should do with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input itself is wrong: dead-letter it and keep going.
    BadData,
    /// The outside world is temporarily unavailable: retry with backoff.
    Transient,
    /// The process cannot go on: drain, exit non-zero.
    Fatal,
}

impl ErrorClass {
    /// Stable lowercase name, used in dead-letter headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::BadData => "bad_data",
            ErrorClass::Transient => "transient",
            ErrorClass::Fatal => "fatal",
        }
    }
}

/// Errors of the model runtime: model directory, tokenizer, ONNX Runtime, target spaces.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}. Check that the file exists and is readable (run the setup command to build a model directory)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The manifest is missing a field or is malformed.
    #[error("{path}: invalid model manifest: {msg}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A file's checksum differs from the manifest.
    #[error("{path}: sha256 {actual} does not match the manifest ({expected}); the file is corrupt or was replaced, rebuild the model directory")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The tokenizer could not be loaded or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// ONNX Runtime failed to load, build a session or run.
    #[error("onnx runtime: {0}")]
    Runtime(String),
    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// Model weights are not what the graph expects.
    #[error("weights: {0}")]
    Weights(String),
    /// A target space or task file has a bad line.
    #[error("{path}:{line}: {msg}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// Invalid input data.
    #[error("{0}")]
    Invalid(String),
}

impl ModelError {
    /// Build an [`ModelError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
        let path = path.into();
        move |source| ModelError::Io { path, source }
    }
}

/// Reads a JSONL file: each non-blank line parsed as `T`, with its 1-based line number. A line
/// that cannot be read or parsed is a `BadLine` naming the file, the line and `shape` (what
/// a line should look like).
pub fn read_jsonl<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    shape: &str,
) -> Result<Vec<(usize, T)>> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).map_err(ModelError::io(path))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let bad = |msg: String| ModelError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let line = line.map_err(|e| bad(format!("unreadable line: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line).map_err(|e| bad(format!("expected {shape}: {e}")))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

/// Reads a CSV file with a header row: each record with its 1-based line number (records
/// span one line each in the files read here). A file that cannot be opened, or a record
/// that cannot be parsed, is a `BadLine` naming the file and the line.
pub fn read_csv(path: &std::path::Path) -> Result<Vec<(usize, csv::StringRecord)>> {
    let bad = |line: usize, e: csv::Error| ModelError::BadLine {
        path: path.to_path_buf(),
        line,
        msg: e.to_string(),
    };
    let mut rdr = csv::Reader::from_path(path).map_err(|e| bad(0, e))?;
    rdr.records()
        .enumerate()
        .map(|(i, rec)| rec.map(|r| (i + 2, r)).map_err(|e| bad(i + 2, e)))
        .collect()
}

/// Shorthand result for the model runtime.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
