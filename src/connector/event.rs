//! Input events and the texts a pipeline ranks from them.

use serde::{Deserialize, Serialize};

use super::config::EventType;

/// A raw job vacancy (`schemas/json/vacancy.schema.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Vacancy {
    /// Source id.
    pub id: String,
    /// Job title.
    pub title: String,
    /// Full description.
    pub description: String,
    /// Location.
    #[serde(default)]
    pub location: Option<String>,
    /// Language code.
    #[serde(default)]
    pub language: Option<String>,
    /// ISO 8601 date.
    #[serde(default)]
    pub posted_date: Option<String>,
    /// Job board or feed.
    #[serde(default)]
    pub source: Option<String>,
}

/// One position of a CV.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Experience {
    /// Job title held.
    pub title: String,
    /// What the person did.
    #[serde(default)]
    pub description: Option<String>,
}

/// A raw CV (`schemas/json/cv.schema.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cv {
    /// Source id.
    pub id: String,
    /// Headline.
    #[serde(default)]
    pub headline: Option<String>,
    /// Summary.
    #[serde(default)]
    pub summary: Option<String>,
    /// Positions.
    #[serde(default)]
    pub experiences: Vec<Experience>,
    /// Skills the person lists.
    #[serde(default)]
    pub skills: Vec<String>,
    /// Language code.
    #[serde(default)]
    pub language: Option<String>,
}

/// A decoded event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A vacancy.
    Vacancy(Vacancy),
    /// A CV.
    Cv(Cv),
}

/// A text taken from an event, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldText {
    /// Location in the event, e.g. `description` or `experiences[1].title`.
    pub field: String,
    /// The text.
    pub text: String,
}

impl Event {
    /// Deserialises a JSON value as an event of type `t`.
    pub fn from_json(t: EventType, v: serde_json::Value) -> Result<Self, serde_json::Error> {
        Ok(match t {
            EventType::Vacancy => Event::Vacancy(serde_json::from_value(v)?),
            EventType::Cv => Event::Cv(serde_json::from_value(v)?),
        })
    }

    /// The source id.
    pub fn id(&self) -> &str {
        match self {
            Event::Vacancy(v) => &v.id,
            Event::Cv(c) => &c.id,
        }
    }

    /// The texts of one named field (see `config::known_fields`); empty ones are skipped.
    pub fn texts(&self, field: &str) -> Vec<FieldText> {
        let one = |f: &str, t: &str| FieldText {
            field: f.into(),
            text: t.into(),
        };
        let mut out: Vec<FieldText> = match (self, field) {
            (Event::Vacancy(v), "title") => vec![one("title", &v.title)],
            (Event::Vacancy(v), "description") => vec![one("description", &v.description)],
            (Event::Cv(c), "headline") => c.headline.iter().map(|t| one("headline", t)).collect(),
            (Event::Cv(c), "summary") => c.summary.iter().map(|t| one("summary", t)).collect(),
            (Event::Cv(c), "experience_title") => c
                .experiences
                .iter()
                .enumerate()
                .map(|(i, e)| one(&format!("experiences[{i}].title"), &e.title))
                .collect(),
            (Event::Cv(c), "experience_description") => c
                .experiences
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    e.description
                        .as_ref()
                        .map(|d| one(&format!("experiences[{i}].description"), d))
                })
                .collect(),
            (Event::Cv(c), "skills") => c
                .skills
                .iter()
                .enumerate()
                .map(|(i, s)| one(&format!("skills[{i}]"), s))
                .collect(),
            _ => vec![],
        };
        out.retain(|f| !f.text.trim().is_empty());
        out
    }
}
