//! Embedded target spaces and their disk cache.
//!
//! File layout (little-endian): magic `UWESPC01`, `u32` dim, `u64` concepts, `u64` token
//! rows, `u64` offsets (concepts + 1), pooled `f32` (concepts × dim), token rows `f16`
//! (rows × dim; half precision halves memory and load time at no measurable ranking cost),
//! then the sha256 of everything before it. A file that fails any check is recomputed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;
use sha2::{Digest, Sha256};

use super::TargetSpace;
use crate::encoder::Encoder;
use crate::error::{ModelError, Result};

const MAGIC: &[u8; 8] = b"UWESPC01";

/// A target space with its embeddings.
#[derive(Debug)]
pub struct EncodedSpace {
    /// The concepts.
    pub space: Arc<TargetSpace>,
    /// Embedding width.
    pub dim: usize,
    /// Pooled, normalised embeddings, `concepts × dim`.
    pub pooled: Vec<f32>,
    /// Token rows of concept `i` are `offsets[i]..offsets[i+1]`.
    pub offsets: Vec<usize>,
    /// Normalised token rows, `rows × dim`.
    pub tokens: Vec<f16>,
    /// Model version that produced the embeddings.
    pub model_version: String,
    /// The concepts' alternative labels, embedded one by one, when the space is matched on
    /// them too ([`with_aliases`]).
    pub aliases: Option<Box<AliasRows>>,
}

/// A space's alternative labels, each embedded on its own. A concept then scores
/// `max(label score, weight × best alias score)`: a vacancy titled with an alias ("web
/// developer") finds its occupation even where the preferred label reads differently.
#[derive(Debug)]
pub struct AliasRows {
    /// How much an alias match counts against a preferred-label match, in (0, 1].
    pub weight: f32,
    /// Concept `i`'s aliases are rows `offsets[i]..offsets[i+1]` of `rows`.
    pub offsets: Vec<usize>,
    /// The aliases, one concept each.
    pub rows: EncodedSpace,
}

impl EncodedSpace {
    /// Number of concepts.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// True when the space has no concepts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token rows of concept `i`.
    pub fn tokens_of(&self, i: usize) -> &[f16] {
        &self.tokens[self.offsets[i] * self.dim..self.offsets[i + 1] * self.dim]
    }

    /// Pooled embedding of concept `i`.
    pub fn pooled_of(&self, i: usize) -> &[f32] {
        &self.pooled[i * self.dim..(i + 1) * self.dim]
    }

    /// The text of an alias row (a [`crate::rank::Hit`]'s `alias`).
    pub fn alias_text(&self, row: Option<usize>) -> Option<&str> {
        let a = self.aliases.as_ref()?;
        Some(a.rows.space.concepts.get(row?)?.label.as_str())
    }

    /// Rows embedded for the space: concepts plus aliases.
    pub fn rows(&self) -> usize {
        self.len() + self.aliases.as_ref().map_or(0, |a| a.rows.len())
    }
}

/// The cache directory: `UWE_CACHE_DIR`, else `$XDG_CACHE_HOME/uwe-connect`, else
/// `~/.cache/uwe-connect`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("UWE_CACHE_DIR") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("uwe-connect");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/uwe-connect"))
        .unwrap_or_else(|| PathBuf::from(".uwe/cache"))
}

/// Resolves a space name ([`TargetSpace::resolve`]) and loads or computes its embeddings;
/// with `alias_weight`, its aliases' too ([`with_aliases`]).
pub fn load_named(
    spec: &str,
    data_dir: &Path,
    encoder: &mut Encoder,
    cache_dir: &Path,
    progress: bool,
    alias_weight: Option<f32>,
) -> Result<EncodedSpace> {
    let space = Arc::new(TargetSpace::resolve(spec, data_dir)?);
    let s = load_or_encode(space, encoder, cache_dir, progress)?;
    match alias_weight {
        Some(w) => with_aliases(s, w, encoder, cache_dir, progress),
        None => Ok(s),
    }
}

/// Adds the space's aliases, embedded (and cached) as a space of their own, matched with
/// `weight` (see [`AliasRows`]).
pub fn with_aliases(
    mut s: EncodedSpace,
    weight: f32,
    encoder: &mut Encoder,
    cache_dir: &Path,
    progress: bool,
) -> Result<EncodedSpace> {
    if !(weight > 0.0 && weight <= 1.0) {
        return Err(ModelError::Invalid(format!(
            "alias weight {weight} is outside (0, 1]"
        )));
    }
    let (aliases, offsets) = s.space.alias_space();
    if aliases.concepts.is_empty() {
        return Ok(s);
    }
    let rows = load_or_encode(Arc::new(aliases), encoder, cache_dir, progress)?;
    s.aliases = Some(Box::new(AliasRows {
        weight,
        offsets,
        rows,
    }));
    Ok(s)
}

/// Loads the space's embeddings from `cache_dir`, or computes and stores them.
pub fn load_or_encode(
    space: Arc<TargetSpace>,
    encoder: &mut Encoder,
    cache_dir: &Path,
    progress: bool,
) -> Result<EncodedSpace> {
    let m = encoder.manifest().clone();
    let file = cache_dir.join(format!(
        "{}-{}-{}.uwespace",
        sanitize(&space.name),
        &space.sha256[..16],
        encoder.model_key()
    ));
    if file.exists() {
        match read(&file, space.clone(), &m.version) {
            Ok(s) if s.dim == m.dim && s.len() == space.concepts.len() => return Ok(s),
            Ok(_) => {
                tracing::warn!(file = %file.display(), "space cache does not match, recomputing")
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "space cache unreadable, recomputing")
            }
        }
    }
    let s = encode(space, encoder, progress)?;
    if let Err(e) = write(&file, &s) {
        tracing::warn!(file = %file.display(), error = %e, "could not write the space cache; it will be recomputed next start");
    }
    Ok(s)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Encodes every concept of `space`.
pub fn encode(
    space: Arc<TargetSpace>,
    encoder: &mut Encoder,
    progress: bool,
) -> Result<EncodedSpace> {
    let m = encoder.manifest().clone();
    let n = space.concepts.len();
    let bar = if progress {
        let b = indicatif::ProgressBar::new(n as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "encoding {msg} {bar:40} {pos}/{len} concepts [{elapsed_precise}, eta {eta}]",
            )
            .expect("valid template"),
        );
        b.set_message(space.name.clone());
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut pooled = Vec::with_capacity(n * m.dim);
    let mut offsets = vec![0usize];
    let mut tokens: Vec<f16> = Vec::new();
    let chunk = 512;
    for start in (0..n).step_by(chunk) {
        let texts: Vec<String> = (start..(start + chunk).min(n))
            .map(|i| space.text_of(i, m.target_text))
            .collect();
        for e in encoder.encode(&texts)? {
            pooled.extend_from_slice(&e.pooled);
            tokens.extend(e.tokens.iter().map(|&x| f16::from_f32(x)));
            offsets.push(offsets.last().unwrap() + e.n_tokens);
        }
        bar.inc(texts.len() as u64);
    }
    bar.finish_and_clear();
    Ok(EncodedSpace {
        space,
        dim: m.dim,
        pooled,
        offsets,
        tokens,
        model_version: m.version.clone(),
        aliases: None,
    })
}

fn write(file: &Path, s: &EncodedSpace) -> Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(32 + s.pooled.len() * 4 + s.tokens.len() * 2);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&(s.dim as u32).to_le_bytes());
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(&(*s.offsets.last().unwrap() as u64).to_le_bytes());
    for &o in &s.offsets {
        buf.extend_from_slice(&(o as u64).to_le_bytes());
    }
    buf.extend_from_slice(bytemuck::cast_slice(&s.pooled));
    for t in &s.tokens {
        buf.extend_from_slice(&t.to_bits().to_le_bytes());
    }
    let digest = Sha256::digest(&buf);
    buf.extend_from_slice(&digest);
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(ModelError::io(dir))?;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &buf).map_err(ModelError::io(&tmp))?;
    std::fs::rename(&tmp, file).map_err(ModelError::io(file))?;
    Ok(())
}

fn read(file: &Path, space: Arc<TargetSpace>, model_version: &str) -> Result<EncodedSpace> {
    let buf = std::fs::read(file).map_err(ModelError::io(file))?;
    let bad = |m: &str| ModelError::Invalid(format!("{}: {m}", file.display()));
    if buf.len() < 28 + 32 || &buf[..8] != MAGIC {
        return Err(bad("not a space cache file"));
    }
    let (body, digest) = buf.split_at(buf.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(bad("checksum mismatch"));
    }
    let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().unwrap()) as usize;
    let dim = u32::from_le_bytes(body[8..12].try_into().unwrap()) as usize;
    let n = u64_at(12);
    let rows = u64_at(20);
    let mut p = 28;
    let need = p + (n + 1) * 8 + n * dim * 4 + rows * dim * 2;
    if body.len() != need {
        return Err(bad("truncated"));
    }
    let offsets: Vec<usize> = (0..=n).map(|i| u64_at(p + i * 8)).collect();
    p += (n + 1) * 8;
    let pooled: Vec<f32> = body[p..p + n * dim * 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    p += n * dim * 4;
    let tokens: Vec<f16> = body[p..]
        .chunks_exact(2)
        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    if offsets.last() != Some(&rows) || offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(bad("bad offsets"));
    }
    Ok(EncodedSpace {
        space,
        dim,
        pooled,
        offsets,
        tokens,
        model_version: model_version.to_string(),
        aliases: None,
    })
}
