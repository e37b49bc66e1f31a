//! The feedback log: one JSON line per accepted event, appended and fsynced before the
//! consumer commits the event's offset, in the registry volume next to the models it trains.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::feedback::Feedback;
use crate::error::ModelError;

/// Where an event was read: the feedback topic's partition and offset.
pub type Origin = (String, i32, i64);

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The validated event.
    pub feedback: Feedback,
    /// Where it was read (deduplicates a batch re-read after a crash before its commit).
    pub origin: Origin,
    /// When it was stored (RFC 3339).
    pub stored_at: String,
}

/// The append-only log (`<registry>/feedback/feedback.jsonl`).
pub struct FeedbackStore {
    path: PathBuf,
    file: File,
    seen: HashSet<Origin>,
    len: usize,
}

/// The log's file in a registry.
pub fn store_path(registry: &Path) -> PathBuf {
    registry.join("feedback").join("feedback.jsonl")
}

impl FeedbackStore {
    /// Opens (or creates) the log. A last line without its newline was torn by a crash
    /// before its fsync, so its offset was never committed: it is cut, and the event is read
    /// again from the topic.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(ModelError::io(d))?;
        }
        let text = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ModelError::io(path)(e)),
        };
        let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut seen = HashSet::new();
        let mut len = 0;
        for (i, line) in text[..keep].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let s: Stored = serde_json::from_slice(line).map_err(|e| ModelError::BadLine {
                path: path.to_path_buf(),
                line: i + 1,
                msg: format!("not a stored feedback line ({e}); the log is only ever appended by uwe-trainer serve: restore it from a backup or move it aside"),
            })?;
            seen.insert(s.origin);
            len += 1;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(ModelError::io(path))?;
        if keep < text.len() {
            tracing::warn!(path = %path.display(), bytes = text.len() - keep, "cutting a torn last line (a crash before its fsync); its event is read again from the topic");
            file.set_len(keep as u64).map_err(ModelError::io(path))?;
            file.seek(SeekFrom::End(0)).map_err(ModelError::io(path))?;
            file.sync_all().map_err(ModelError::io(path))?;
        }
        Ok(FeedbackStore {
            path: path.to_path_buf(),
            file,
            seen,
            len,
        })
    }

    /// Events stored so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the event read at `origin` is already stored.
    pub fn contains(&self, origin: &Origin) -> bool {
        self.seen.contains(origin)
    }

    /// Appends events not stored yet and fsyncs; returns how many were new. Only after it
    /// returns may their offsets be committed.
    pub fn append(&mut self, items: Vec<(Feedback, Origin)>) -> Result<usize, ModelError> {
        let now = crate::model::now_rfc3339();
        let mut buf = Vec::new();
        let mut added = Vec::new();
        for (feedback, origin) in items {
            if self.seen.contains(&origin) || added.contains(&origin) {
                continue;
            }
            let s = Stored {
                feedback,
                origin: origin.clone(),
                stored_at: now.clone(),
            };
            serde_json::to_writer(&mut buf, &s).expect("feedback serialises");
            buf.push(b'\n');
            added.push(origin);
        }
        if added.is_empty() {
            return Ok(0);
        }
        self.file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data())
            .map_err(ModelError::io(&self.path))?;
        let n = added.len();
        self.len += n;
        self.seen.extend(added);
        Ok(n)
    }

    /// Every stored event, oldest first.
    pub fn read_all(&self) -> Result<Vec<Stored>, ModelError> {
        read_store(&self.path)
    }
}

/// Reads a feedback log (complete lines only).
pub fn read_store(path: &Path) -> Result<Vec<Stored>, ModelError> {
    let text = std::fs::read_to_string(path).map_err(ModelError::io(path))?;
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| ModelError::BadLine {
                path: path.to_path_buf(),
                line: i + 1,
                msg: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::feedback::Verdict;

    fn fb(text: &str) -> Feedback {
        Feedback {
            text: text.into(),
            label_id: "s:1".into(),
            verdict: Verdict::Confirm,
            target: "esco-skills".into(),
            source: None,
            analyst: None,
            at: "2026-12-03T10:00:00Z".into(),
        }
    }

    #[test]
    fn appends_survive_reopening_duplicates_are_skipped_and_a_torn_line_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fb/feedback.jsonl");
        let o = |off: i64| ("uwe.feedback".to_string(), 0, off);
        let mut s = FeedbackStore::open(&p).unwrap();
        assert_eq!(
            s.append(vec![(fb("a"), o(0)), (fb("b"), o(1)), (fb("b"), o(1))])
                .unwrap(),
            2
        );
        drop(s);
        // A crash mid-write leaves half a line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"feedback\":{\"te")
            .unwrap();
        let mut s = FeedbackStore::open(&p).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.contains(&o(1)));
        // The batch is read again after the crash: only the unstored event is added.
        assert_eq!(s.append(vec![(fb("b"), o(1)), (fb("c"), o(2))]).unwrap(), 1);
        let all = s.read_all().unwrap();
        assert_eq!(
            all.iter()
                .map(|x| x.feedback.text.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(all[2].origin, o(2));
        std::fs::write(&p, "garbage\n").unwrap();
        let e = FeedbackStore::open(&p).err().unwrap().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
