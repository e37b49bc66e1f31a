//! A retraining run's state in the registry. A run is written down before it starts
//! (`.serve-run.json`: its version and how much feedback it trains on) and its checkpoints
//! go to `.serve-checkpoint/`; a restarted service finds both and resumes the same run.
//! Publishing is a rename of a finished directory, so a killed run leaves nothing a
//! connector could load; its staging leftovers are removed at start-up.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// A run in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The version the candidate will have.
    pub version: String,
    /// Feedback events it trains on (the first `feedback_through` of the log).
    pub feedback_through: usize,
    /// Why it started.
    pub reason: String,
    /// When it started (RFC 3339).
    pub started_at: String,
}

/// What the last finished run did (`<registry>/feedback/state.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    /// Feedback events the last run trained on; newer ones count towards the next trigger.
    pub feedback_through: usize,
    /// Its version.
    pub version: Option<String>,
    /// Whether the gate published it.
    pub published: bool,
    /// When it ended (Unix seconds).
    pub ended_at: Option<i64>,
}

fn run_file(registry: &Path) -> PathBuf {
    registry.join(".serve-run.json")
}

fn last_file(registry: &Path) -> PathBuf {
    registry.join("feedback").join("state.json")
}

/// The run's checkpoint folder.
pub fn checkpoint_dir(registry: &Path) -> PathBuf {
    registry.join(".serve-checkpoint")
}

/// Writes `value` as JSON through a temporary file, fsynced, then renamed over `path`.
fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), ModelError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(ModelError::io(&tmp))?;
    f.write_all(&serde_json::to_vec_pretty(value).expect("serialises"))
        .and_then(|_| f.sync_all())
        .map_err(ModelError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(ModelError::io(path))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ModelError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            ModelError::Invalid(format!(
                "{}: {e}; delete it to start afresh",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::io(path)(e)),
    }
}

/// Records that a run starts (a fresh checkpoint folder).
pub fn begin(registry: &Path, run: &RunState) -> Result<(), ModelError> {
    let ck = checkpoint_dir(registry);
    let _ = std::fs::remove_dir_all(&ck);
    std::fs::create_dir_all(&ck).map_err(ModelError::io(&ck))?;
    write_atomic(&run_file(registry), run)
}

/// The unfinished run a previous process left, if any.
pub fn unfinished(registry: &Path) -> Result<Option<RunState>, ModelError> {
    read_json(&run_file(registry))
}

/// Records a finished run (published or refused) and removes its run state and checkpoints.
pub fn finish(registry: &Path, last: &LastRun) -> Result<(), ModelError> {
    let d = registry.join("feedback");
    std::fs::create_dir_all(&d).map_err(ModelError::io(&d))?;
    write_atomic(&last_file(registry), last)?;
    let _ = std::fs::remove_file(run_file(registry));
    let _ = std::fs::remove_dir_all(checkpoint_dir(registry));
    Ok(())
}

/// The last finished run.
pub fn last(registry: &Path) -> Result<LastRun, ModelError> {
    Ok(read_json(&last_file(registry))?.unwrap_or_default())
}

/// Removes what a killed run leaves in the registry root: staging directories, trained
/// weights not yet moved into one, half-made `current` links. Returns what it removed.
pub fn clean_partials(registry: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(registry).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(".staging-")
            || name.starts_with(".trained-")
            || name.starts_with(".current-")
        {
            let p = e.path();
            let ok = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if ok.is_ok() {
                removed.push(p);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_found_until_finished_and_partials_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        assert_eq!(unfinished(r).unwrap(), None);
        let run = RunState {
            version: "uwe-1".into(),
            feedback_through: 7,
            reason: "feedback".into(),
            started_at: "2026-12-03T10:00:00Z".into(),
        };
        begin(r, &run).unwrap();
        assert!(checkpoint_dir(r).is_dir());
        assert_eq!(unfinished(r).unwrap(), Some(run));
        std::fs::create_dir_all(r.join(".staging-uwe-1/x")).unwrap();
        std::fs::write(r.join(".trained-uwe-1.safetensors"), b"x").unwrap();
        std::fs::create_dir_all(r.join("uwe-0")).unwrap();
        assert_eq!(clean_partials(r).len(), 2);
        assert!(r.join("uwe-0").is_dir());
        let last = LastRun {
            feedback_through: 7,
            version: Some("uwe-1".into()),
            published: true,
            ended_at: Some(1),
        };
        finish(r, &last).unwrap();
        assert_eq!(unfinished(r).unwrap(), None);
        assert!(!checkpoint_dir(r).exists());
        assert_eq!(super::last(r).unwrap(), last);
    }
}
