//! Dead letters: a bad event's own bytes and headers, plus headers that say what was wrong.

use super::super::kafka::OutRecord;
use super::super::offsets::Tp;
use crate::error::ErrorClass;

/// The parts of an input event a dead letter carries.
pub(crate) struct DeadLetterSource<'a> {
    /// Input topic and partition.
    pub tp: &'a Tp,
    /// Input offset.
    pub offset: i64,
    /// The event's key.
    pub key: &'a Option<Vec<u8>>,
    /// The event's bytes, unchanged.
    pub payload: &'a Option<Vec<u8>>,
    /// The event's headers, unchanged.
    pub headers: &'a [(String, Option<Vec<u8>>)],
}

/// The dead-letter record of an event that failed with `class` / `reason`: the original key,
/// payload and headers, plus `uwe.error.*`, `uwe.source.*` and `uwe.pipeline` headers.
pub(crate) fn dead_letter(
    topic: &str,
    pipeline: &str,
    src: DeadLetterSource<'_>,
    class: ErrorClass,
    reason: &'static str,
    msg: &str,
) -> OutRecord {
    let mut headers = src.headers.to_vec();
    let mut add = |k: &str, v: String| headers.push((k.to_string(), Some(v.into_bytes())));
    add("uwe.error.class", class.as_str().into());
    add("uwe.error.reason", reason.into());
    add("uwe.error.message", msg.chars().take(2000).collect());
    add("uwe.source.topic", src.tp.0.clone());
    add("uwe.source.partition", src.tp.1.to_string());
    add("uwe.source.offset", src.offset.to_string());
    add("uwe.pipeline", pipeline.to_string());
    OutRecord {
        topic: topic.to_string(),
        key: src.key.clone(),
        payload: src.payload.clone().unwrap_or_default(),
        headers,
        dead: Some(reason),
    }
}
