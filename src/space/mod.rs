//! Target spaces: the concepts texts are ranked against (ESCO skills, ESCO occupations, or
//! a user's own taxonomy), and their embeddings, computed once per (model, space) and kept
//! in a disk cache.

pub mod cache;

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};
use crate::model::TargetText;

/// ESCO version the repository ships.
pub const ESCO_VERSION: &str = "esco-v1.1.1";
/// Path of the ESCO classification zip, relative to the data directory.
pub const ESCO_ZIP: &str = "esco/v1.1.1/esco_v1.1.1_classification_en_csv.zip";

/// One concept of a target space.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Concept {
    /// Stable id (a concept URI for ESCO).
    pub id: String,
    /// Preferred label.
    pub label: String,
    /// Alternative labels.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Free-text description.
    #[serde(default)]
    pub description: Option<String>,
}

/// A named list of concepts with a content hash.
#[derive(Debug, Clone)]
pub struct TargetSpace {
    /// Name used in records and metrics (`esco-skills`, `esco-occupations`, or the file stem).
    pub name: String,
    /// Taxonomy version carried by enriched records.
    pub taxonomy_version: String,
    /// The concepts.
    pub concepts: Vec<Concept>,
    /// sha256 over the concepts' content.
    pub sha256: String,
}

impl TargetSpace {
    pub(crate) fn new(name: String, taxonomy_version: String, concepts: Vec<Concept>) -> Self {
        let mut h = Sha256::new();
        for c in &concepts {
            h.update(c.id.as_bytes());
            h.update([0]);
            h.update(c.label.as_bytes());
            h.update([0]);
            for a in &c.aliases {
                h.update(a.as_bytes());
                h.update([1]);
            }
            h.update(c.description.as_deref().unwrap_or("").as_bytes());
            h.update([2]);
        }
        TargetSpace {
            name,
            taxonomy_version,
            concepts,
            sha256: hex::encode(h.finalize()),
        }
    }

    /// The text embedded for a concept.
    pub fn text_of(&self, i: usize, how: TargetText) -> String {
        let c = &self.concepts[i];
        match (how, &c.description) {
            (TargetText::LabelDescription, Some(d)) if !d.is_empty() => format!("{}: {d}", c.label),
            (TargetText::LabelAliases, _) if !c.aliases.is_empty() => {
                // About 600 characters stay within a 256-token window.
                let mut t = c.label.clone();
                for a in c.aliases.iter().filter(|a| *a != &c.label) {
                    if t.len() + a.len() + 2 > 600 {
                        break;
                    }
                    t.push_str(", ");
                    t.push_str(a);
                }
                t
            }
            _ => c.label.clone(),
        }
    }

    /// Concept indices by id.
    pub fn index_by_id(&self) -> std::collections::HashMap<&str, usize> {
        self.concepts
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str(), i))
            .collect()
    }

    /// Concept ids by lower-cased preferred label (how labelled data names ESCO concepts).
    pub fn ids_by_label(&self) -> std::collections::HashMap<String, &str> {
        self.concepts
            .iter()
            .map(|c| (c.label.to_lowercase(), c.id.as_str()))
            .collect()
    }

    /// The space of this space's alternative labels, one concept per distinct alias (its id
    /// the owner's id), with `offsets`: concept `i`'s aliases are `offsets[i]..offsets[i+1]`.
    /// Aliases equal to the preferred label (ignoring case) are left out.
    pub fn alias_space(&self) -> (TargetSpace, Vec<usize>) {
        let mut concepts = Vec::new();
        let mut offsets = vec![0];
        for c in &self.concepts {
            let mut seen = std::collections::HashSet::from([c.label.trim().to_lowercase()]);
            for a in &c.aliases {
                if seen.insert(a.trim().to_lowercase()) {
                    concepts.push(Concept {
                        id: c.id.clone(),
                        label: a.trim().to_string(),
                        aliases: vec![],
                        description: None,
                    });
                }
            }
            offsets.push(concepts.len());
        }
        let space = TargetSpace::new(
            format!("{}.aliases", self.name),
            self.taxonomy_version.clone(),
            concepts,
        );
        (space, offsets)
    }

    /// Resolves a space name: `esco-skills`, `esco-occupations`, or a path to a JSONL file.
    pub fn resolve(spec: &str, data_dir: &Path) -> Result<Self> {
        match spec {
            "esco-skills" => load_esco(data_dir, "skills_en.csv", "esco-skills"),
            "esco-occupations" => load_esco(data_dir, "occupations_en.csv", "esco-occupations"),
            path => load_jsonl(Path::new(path)),
        }
    }
}

/// The directory holding `esco/` and the evaluation sets: `UWE_DATA_DIR`, else `./data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("UWE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Reads one member of the ESCO classification zip.
pub fn read_esco_member(data_dir: &Path, member: &str) -> Result<Vec<u8>> {
    read_zip_member(&data_dir.join(ESCO_ZIP), member)
}

/// ESCO's language-independent relations (`occupationSkillRelations.csv`,
/// `broaderRelationsSkillPillar.csv`, ...), under the data directory.
pub const ESCO_RELATIONS_ZIP: &str =
    "esco/v1.1.1/esco_v1.1.1_classification_language-independent_csv.zip";

/// The bytes of one member of ESCO's relations zip ([`ESCO_RELATIONS_ZIP`]).
pub fn read_esco_relations(data_dir: &Path, member: &str) -> Result<Vec<u8>> {
    read_zip_member(&data_dir.join(ESCO_RELATIONS_ZIP), member)
}

/// A CSV reader over `bytes` (the ESCO member `member`, named in errors) and the positions
/// of the columns `names`; an error names the first one missing.
pub(crate) fn esco_columns<'a, const N: usize>(
    member: &str,
    bytes: &'a [u8],
    names: [&str; N],
) -> Result<(csv::Reader<&'a [u8]>, [usize; N])> {
    let mut rdr = csv::Reader::from_reader(bytes);
    let head = rdr
        .headers()
        .map_err(|e| ModelError::Invalid(format!("{member}: {e}")))?
        .clone();
    let mut at = [0; N];
    for (slot, name) in at.iter_mut().zip(names) {
        *slot = head.iter().position(|h| h == name).ok_or_else(|| {
            ModelError::Invalid(format!(
                "{member} has no {name} column: is this ESCO v1.1.1?"
            ))
        })?;
    }
    Ok((rdr, at))
}

fn read_zip_member(zpath: &Path, member: &str) -> Result<Vec<u8>> {
    let zpath = zpath.to_path_buf();
    let f = std::fs::File::open(&zpath).map_err(ModelError::io(&zpath))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| ModelError::BadLine {
        path: zpath.clone(),
        line: 0,
        msg: format!("not a readable zip: {e}"),
    })?;
    let mut entry = zip.by_name(member).map_err(|e| ModelError::BadLine {
        path: zpath.clone(),
        line: 0,
        msg: format!("no member {member}: {e}"),
    })?;
    let mut buf = Vec::new();
    entry
        .read_to_end(&mut buf)
        .map_err(ModelError::io(&zpath))?;
    Ok(buf)
}

fn load_esco(data_dir: &Path, member: &str, name: &str) -> Result<TargetSpace> {
    let bytes = read_esco_member(data_dir, member)?;
    let path = data_dir.join(ESCO_ZIP).join(member);
    let mut rdr = csv::Reader::from_reader(bytes.as_slice());
    let headers = rdr.headers().map_err(|e| ModelError::BadLine {
        path: path.clone(),
        line: 1,
        msg: e.to_string(),
    })?;
    let col = |n: &str| {
        headers
            .iter()
            .position(|h| h == n)
            .ok_or_else(|| ModelError::BadLine {
                path: path.clone(),
                line: 1,
                msg: format!("no column {n}"),
            })
    };
    let (uri, pref, alt, desc) = (
        col("conceptUri")?,
        col("preferredLabel")?,
        col("altLabels")?,
        col("description")?,
    );
    let mut concepts = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| ModelError::BadLine {
            path: path.clone(),
            line: i + 2,
            msg: e.to_string(),
        })?;
        let get = |k: usize| rec.get(k).unwrap_or("").trim().to_string();
        let aliases = get(alt)
            .lines()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let d = get(desc);
        concepts.push(Concept {
            id: get(uri),
            label: get(pref),
            aliases,
            description: (!d.is_empty()).then_some(d),
        });
    }
    Ok(TargetSpace::new(name.into(), ESCO_VERSION.into(), concepts))
}

/// Loads a custom space: one JSON object per line, `{"id", "label", "aliases"?, "description"?}`.
pub fn load_jsonl(path: &Path) -> Result<TargetSpace> {
    let mut concepts = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let lines = crate::error::read_jsonl::<Concept>(
        path,
        "{\"id\", \"label\", \"aliases\"?, \"description\"?}",
    )?;
    for (line, c) in lines {
        let bad = |msg: String| ModelError::BadLine {
            path: path.to_path_buf(),
            line,
            msg,
        };
        if c.id.trim().is_empty() || c.label.trim().is_empty() {
            return Err(bad("id and label must not be empty".into()));
        }
        if !seen.insert(c.id.clone()) {
            return Err(bad(format!("duplicate id {:?}", c.id)));
        }
        concepts.push(c);
    }
    if concepts.is_empty() {
        return Err(ModelError::BadLine {
            path: path.to_path_buf(),
            line: 0,
            msg: "the space has no concepts".into(),
        });
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "custom".into());
    Ok(TargetSpace::new(
        name.clone(),
        format!("custom:{name}"),
        concepts,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esco_columns_finds_columns_and_names_the_missing_one() {
        let csv = b"conceptUri,skillType\nu1,knowledge\n";
        let (mut rdr, [ty, uri]) =
            esco_columns("skills_en.csv", csv, ["skillType", "conceptUri"]).unwrap();
        assert_eq!((ty, uri), (1, 0));
        assert_eq!(rdr.records().count(), 1);
        let Err(e) = esco_columns("skills_en.csv", csv, ["conceptUri", "broaderUri"]) else {
            panic!("there is no broaderUri column");
        };
        assert!(e.to_string().contains("no broaderUri column"), "{e}");
    }

    #[test]
    fn jsonl_bad_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tax.jsonl");
        std::fs::write(
            &p,
            "{\"id\":\"a\",\"label\":\"welding\"}\n\n{\"id\":\"b\",\"labl\":\"x\"}\n",
        )
        .unwrap();
        let e = load_jsonl(&p).unwrap_err().to_string();
        assert!(e.contains("tax.jsonl:3:"), "{e}");
    }

    #[test]
    fn jsonl_loads_and_hashes_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tax.jsonl");
        std::fs::write(
            &p,
            "{\"id\":\"a\",\"label\":\"welding\",\"aliases\":[\"weld\"]}\n",
        )
        .unwrap();
        let s1 = load_jsonl(&p).unwrap();
        assert_eq!(s1.concepts[0].aliases, vec!["weld"]);
        std::fs::write(&p, "{\"id\":\"a\",\"label\":\"welding\"}\n").unwrap();
        let s2 = load_jsonl(&p).unwrap();
        assert_ne!(s1.sha256, s2.sha256);
    }

    #[test]
    fn esco_spaces_load_from_the_repo() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let s = TargetSpace::resolve("esco-skills", &dir).unwrap();
        assert_eq!(s.concepts.len(), 13896);
        let o = TargetSpace::resolve("esco-occupations", &dir).unwrap();
        assert_eq!(o.concepts.len(), 3007);
        let (a, offsets) = o.alias_space();
        assert_eq!(offsets.len(), 3008);
        assert!(a.concepts.len() > 25_000, "{} aliases", a.concepts.len());
        for (i, c) in o.concepts.iter().enumerate() {
            for alias in &a.concepts[offsets[i]..offsets[i + 1]] {
                assert_eq!(alias.id, c.id);
                assert_ne!(alias.label.to_lowercase(), c.label.to_lowercase());
            }
        }
        assert!(o
            .concepts
            .iter()
            .all(|c| c.id.starts_with("http://data.europa.eu/esco/occupation/")));
    }
}
