//! Decoders: JSON, and Avro in the Confluent wire format with writer schemas from a local
//! folder or a schema registry. Every failure is classed: bad data is dead-lettered, an
//! unreachable registry is transient.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use apache_avro::Schema;

use super::config::{CodecSection, EventType, Format};
use super::event::Event;
use crate::error::ErrorClass;

/// Why an event could not be decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {msg}")]
pub struct DecodeError {
    /// What to do with it.
    pub class: ErrorClass,
    /// Short machine-readable reason (dead-letter header `uwe.error.reason`).
    pub reason: &'static str,
    /// What happened.
    pub msg: String,
}

impl DecodeError {
    /// A bad-data error (dead-letter it) with this reason.
    pub fn bad(reason: &'static str, msg: impl Into<String>) -> Self {
        DecodeError {
            class: ErrorClass::BadData,
            reason,
            msg: msg.into(),
        }
    }
}

/// A codec-construction error (at start-up).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct CodecSetupError {
    /// File involved.
    pub path: PathBuf,
    /// What is wrong.
    pub msg: String,
}

/// Decodes payloads of one pipeline into events.
pub struct Codec {
    event_type: EventType,
    values: ValueDecoder,
}

/// Decodes payloads into JSON values: size bound, JSON (a byte-order mark tolerated) or
/// Avro in the Confluent wire format read with a reader schema. The connector's events and
/// the trainer's feedback share it.
pub struct ValueDecoder {
    max_bytes: usize,
    avro: Option<Avro>,
}

struct Avro {
    reader: Schema,
    writers: Mutex<HashMap<u32, Schema>>,
    registry: Option<String>,
}

/// Default reader schema of an event type.
pub fn default_reader_schema(t: EventType) -> PathBuf {
    PathBuf::from(format!("schemas/avro/{}.avsc", t.as_str()))
}

/// Loads `<id>-*.avsc` files from `dir`.
pub fn load_schema_dir(dir: &Path) -> Result<HashMap<u32, Schema>, CodecSetupError> {
    let err = |p: &Path, m: String| CodecSetupError {
        path: p.to_path_buf(),
        msg: m,
    };
    let mut out = HashMap::new();
    let rd =
        std::fs::read_dir(dir).map_err(|e| err(dir, format!("cannot read schema folder: {e}")))?;
    for entry in rd.flatten() {
        let p = entry.path();
        let name = p
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if !name.ends_with(".avsc") {
            continue;
        }
        let id: u32 = name
            .split(['-', '.'])
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err(&p, "writer schema files are named <id>-<name>.avsc".into()))?;
        let text = std::fs::read_to_string(&p).map_err(|e| err(&p, e.to_string()))?;
        let s =
            Schema::parse_str(&text).map_err(|e| err(&p, format!("invalid Avro schema: {e}")))?;
        if out.insert(id, s).is_some() {
            return Err(err(&p, format!("schema id {id} is defined twice")));
        }
    }
    Ok(out)
}

impl Codec {
    /// Builds the codec of a pipeline.
    pub fn new(cfg: &CodecSection, event_type: EventType) -> Result<Self, CodecSetupError> {
        Ok(Codec {
            event_type,
            values: ValueDecoder::new(cfg, &default_reader_schema(event_type))?,
        })
    }

    /// Decodes one payload.
    pub fn decode(&self, payload: Option<&[u8]>) -> Result<Event, DecodeError> {
        let value = self.values.decode(payload)?;
        let ev = Event::from_json(self.event_type, value).map_err(|e| {
            DecodeError::bad(
                "schema",
                format!("not a valid {} event: {e}", self.event_type.as_str()),
            )
        })?;
        if ev.id().trim().is_empty() {
            return Err(DecodeError::bad("schema", "`id` is empty"));
        }
        Ok(ev)
    }
}

impl ValueDecoder {
    /// Builds a decoder; `default_reader` is the Avro reader schema unless
    /// `codec.reader_schema` names another.
    pub fn new(cfg: &CodecSection, default_reader: &Path) -> Result<Self, CodecSetupError> {
        let avro = match cfg.format {
            Format::Json => None,
            Format::Avro => {
                // Bound what a corrupt length prefix can make the Avro decoder allocate
                // (process-wide; an event is far smaller than this).
                apache_avro::max_allocation_bytes(64 << 20);
                let rpath = cfg
                    .reader_schema
                    .clone()
                    .unwrap_or_else(|| default_reader.to_path_buf());
                let text = std::fs::read_to_string(&rpath).map_err(|e| CodecSetupError {
                    path: rpath.clone(),
                    msg: format!("cannot read the reader schema: {e}"),
                })?;
                let reader = Schema::parse_str(&text).map_err(|e| CodecSetupError {
                    path: rpath.clone(),
                    msg: format!("invalid Avro schema: {e}"),
                })?;
                let writers = match &cfg.schema_dir {
                    Some(d) => load_schema_dir(d)?,
                    None => HashMap::new(),
                };
                Some(Avro {
                    reader,
                    writers: Mutex::new(writers),
                    registry: cfg.registry_url.clone(),
                })
            }
        };
        Ok(ValueDecoder {
            max_bytes: cfg.max_event_bytes,
            avro,
        })
    }

    /// Decodes one payload into a JSON value.
    pub fn decode(&self, payload: Option<&[u8]>) -> Result<serde_json::Value, DecodeError> {
        let p = payload
            .ok_or_else(|| DecodeError::bad("empty", "the record has no value (tombstone)"))?;
        if p.len() > self.max_bytes {
            return Err(DecodeError::bad(
                "too_large",
                format!(
                    "{} bytes exceeds codec.max_event_bytes = {}",
                    p.len(),
                    self.max_bytes
                ),
            ));
        }
        match &self.avro {
            None => {
                let s = std::str::from_utf8(p)
                    .map_err(|e| DecodeError::bad("not_utf8", e.to_string()))?;
                // Windows tools write a UTF-8 byte-order mark; JSON itself never needs one.
                let s = s.strip_prefix('\u{feff}').unwrap_or(s);
                serde_json::from_str::<serde_json::Value>(s)
                    .map_err(|e| DecodeError::bad("malformed_json", e.to_string()))
            }
            Some(a) => a.decode(p),
        }
    }
}

impl Avro {
    fn writer(&self, id: u32) -> Result<Schema, DecodeError> {
        if let Some(s) = self.writers.lock().expect("schema cache lock").get(&id) {
            return Ok(s.clone());
        }
        let Some(url) = &self.registry else {
            return Err(DecodeError::bad(
                "unknown_schema",
                format!("schema id {id} is not in codec.schema_dir and no registry is configured"),
            ));
        };
        let url = format!("{}/schemas/ids/{id}", url.trim_end_matches('/'));
        let transient = |m: String| DecodeError {
            class: ErrorClass::Transient,
            reason: "registry_unavailable",
            msg: m,
        };
        let resp = ureq::get(&url).call();
        let body = match resp {
            Ok(mut r) => r
                .body_mut()
                .read_to_string()
                .map_err(|e| transient(format!("{url}: {e}")))?,
            Err(ureq::Error::StatusCode(404)) => {
                return Err(DecodeError::bad(
                    "unknown_schema",
                    format!("{url}: schema id {id} not found"),
                ))
            }
            Err(e) => return Err(transient(format!("{url}: {e}"))),
        };
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| transient(format!("{url}: not JSON: {e}")))?;
        let text = v["schema"]
            .as_str()
            .ok_or_else(|| transient(format!("{url}: no `schema` field in the answer")))?;
        let s = Schema::parse_str(text).map_err(|e| {
            DecodeError::bad("unknown_schema", format!("{url}: invalid schema: {e}"))
        })?;
        self.writers
            .lock()
            .expect("schema cache lock")
            .insert(id, s.clone());
        Ok(s)
    }

    fn decode(&self, p: &[u8]) -> Result<serde_json::Value, DecodeError> {
        if p.len() < 5 || p[0] != 0 {
            return Err(DecodeError::bad(
                "avro_framing",
                "expected the Confluent wire format: magic byte 0, 4-byte schema id, Avro body",
            ));
        }
        let id = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
        let writer = self.writer(id)?;
        let mut body = &p[5..];
        let v = apache_avro::from_avro_datum(&writer, &mut body, Some(&self.reader))
            .map_err(|e| DecodeError::bad("avro", format!("schema id {id}: {e}")))?;
        serde_json::Value::try_from(v).map_err(|e| DecodeError::bad("avro", e.to_string()))
    }
}

/// Frames an Avro body in the Confluent wire format.
pub fn confluent_frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(0);
    v.extend_from_slice(&schema_id.to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;

    fn json_codec(t: EventType) -> Codec {
        Codec::new(&CodecSection::default(), t).unwrap()
    }

    fn avro_codec(t: EventType) -> Codec {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cfg = CodecSection {
            format: Format::Avro,
            schema_dir: Some(root.join("schemas/registry")),
            reader_schema: Some(root.join(format!("schemas/avro/{}.avsc", t.as_str()))),
            ..Default::default()
        };
        Codec::new(&cfg, t).unwrap()
    }

    #[test]
    fn json_vacancy_and_errors() {
        let c = json_codec(EventType::Vacancy);
        let e = c
            .decode(Some(br#"{"id":"1","title":"Chef","description":"Cook."}"#))
            .unwrap();
        assert_eq!(e.id(), "1");
        let bom = c
            .decode(Some(
                b"\xef\xbb\xbf{\"id\":\"2\",\"title\":\"Chef\",\"description\":\"Cook.\"}",
            ))
            .unwrap();
        assert_eq!(
            bom.id(),
            "2",
            "a UTF-8 byte-order mark is not malformed JSON"
        );
        assert_eq!(
            c.decode(Some(b"{nope")).unwrap_err().reason,
            "malformed_json"
        );
        assert_eq!(
            c.decode(Some(br#"{"id":"1"}"#)).unwrap_err().reason,
            "schema"
        );
        assert_eq!(
            c.decode(Some(&[0xff, 0xfe])).unwrap_err().reason,
            "not_utf8"
        );
        assert_eq!(c.decode(None).unwrap_err().reason, "empty");
        let big = format!(
            r#"{{"id":"1","title":"t","description":"{}"}}"#,
            "x".repeat(2 << 20)
        );
        assert_eq!(
            c.decode(Some(big.as_bytes())).unwrap_err().reason,
            "too_large"
        );
    }

    #[test]
    fn avro_old_writer_schema_decodes_with_defaults() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let v1 = Schema::parse_str(
            &std::fs::read_to_string(root.join("schemas/registry/1-vacancy-v1.avsc")).unwrap(),
        )
        .unwrap();
        let rec = Value::Record(vec![
            ("id".into(), Value::String("v-1".into())),
            ("title".into(), Value::String("Welder".into())),
            ("description".into(), Value::String("Weld pipes.".into())),
            (
                "location".into(),
                Value::Union(1, Box::new(Value::String("Gent".into()))),
            ),
            ("posted_date".into(), Value::Union(0, Box::new(Value::Null))),
        ]);
        let body = apache_avro::to_avro_datum(&v1, rec).unwrap();
        let ev = avro_codec(EventType::Vacancy)
            .decode(Some(&confluent_frame(1, &body)))
            .unwrap();
        match ev {
            Event::Vacancy(v) => {
                assert_eq!(v.title, "Welder");
                assert_eq!(v.location.as_deref(), Some("Gent"));
                assert_eq!(v.language, None);
            }
            other => panic!("{other:?}"),
        }
        let c = avro_codec(EventType::Vacancy);
        assert_eq!(
            c.decode(Some(&confluent_frame(99, &body)))
                .unwrap_err()
                .reason,
            "unknown_schema"
        );
        assert_eq!(c.decode(Some(&body)).unwrap_err().reason, "avro_framing");
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = json_codec(EventType::Vacancy).decode(Some(&bytes));
            let _ = json_codec(EventType::Cv).decode(Some(&bytes));
            let _ = avro_codec(EventType::Cv).decode(Some(&bytes));
            let mut framed = vec![0, 0, 0, 0, 2];
            framed.extend_from_slice(&bytes);
            let _ = avro_codec(EventType::Vacancy).decode(Some(&framed));
        }
    }
}
