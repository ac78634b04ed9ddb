//! A tenant's retrieval and grounding settings: how relevant a passage must be to be answered
//! from, and what happens to an answer its sources do not support (`GET/PUT
//! /v1/knowledge/settings`; docs/KNOWLEDGE.md).

use serde::{Deserialize, Serialize};

/// Everything a tenant can set; every field has a default, so `{}` is valid.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub relevance: Relevance,
    pub grounding: Grounding,
}

/// The relevance floor of hybrid retrieval.
///
/// A passage passes when its embedding is near the question's (cosine ≥ `min_similarity`);
/// a passage found by words alone passes only when the question passed the floor with some
/// passage (it is on the knowledge's topic), or when its BM25 score reaches `min_lexical`.
/// A question near nothing gets no passage: the honest `no_answer`. Without embeddings (BM25
/// alone) every word match passes, as before.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Relevance {
    pub min_similarity: f64,
    /// `null`: words alone never carry an off-topic question.
    pub min_lexical: Option<f64>,
}

/// The default floor, calibrated with all-MiniLM-L6-v2 on StackFAQ and the 240 off-topic
/// questions of `tests/fixtures/rag_eval/offtopic` (docs/KNOWLEDGE.md has the sweep).
pub const DEFAULT_MIN_SIMILARITY: f64 = 0.35;

impl Default for Relevance {
    fn default() -> Self {
        Relevance {
            min_similarity: DEFAULT_MIN_SIMILARITY,
            min_lexical: None,
        }
    }
}

/// Why a chunk passed the floor, or that it did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Its embedding is near the question's.
    Near,
    /// Its BM25 score reaches `min_lexical`.
    StrongWords,
    /// It shares words with the question, and the question is near some passage (on topic).
    OnTopicWords,
    Fails,
}

impl Relevance {
    /// Applies the floor to one chunk of a hybrid search: its BM25 score (when BM25 found it),
    /// its cosine similarity (when it was among the nearest), and the best similarity of any
    /// chunk to the question.
    pub fn decide(
        &self,
        lexical_score: Option<f32>,
        similarity: Option<f32>,
        best: Option<f32>,
    ) -> Decision {
        let min = self.min_similarity;
        if similarity.is_some_and(|s| f64::from(s) >= min) {
            Decision::Near
        } else if let (Some(score), Some(floor)) = (lexical_score, self.min_lexical)
            && f64::from(score) >= floor
        {
            Decision::StrongWords
        } else if lexical_score.is_some() && best.is_some_and(|b| f64::from(b) >= min) {
            Decision::OnTopicWords
        } else {
            Decision::Fails
        }
    }
}

/// What the grounding check does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grounding {
    /// What an ungrounded answer becomes.
    pub ungrounded: Ungrounded,
    /// The share of an answer's checked sentences its cited passages may leave unsupported
    /// before the answer counts as ungrounded (0 = every sentence must be supported).
    pub max_unsupported: f64,
    /// Appended to an ungrounded answer when `ungrounded` is `note`.
    pub note: String,
}

impl Default for Grounding {
    fn default() -> Self {
        Grounding {
            ungrounded: Ungrounded::Quote,
            max_unsupported: 0.5,
            note: "(I could not match this answer to the sources I was given: please check it.)"
                .to_owned(),
        }
    }
}

/// What happens to an answer that cites nothing, or that its citations do not support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Ungrounded {
    /// Replaced with the best passage, quoted and marked as such (the `fallback` template,
    /// reason `ungrounded`).
    #[default]
    Quote,
    /// Sent with the tenant's note appended.
    Note,
    /// Replaced with the quote, and the conversation handed to a person (with a ticket).
    Handoff,
    /// Sent as it is (still recorded on the message).
    Keep,
}

impl Ungrounded {
    pub fn as_str(self) -> &'static str {
        match self {
            Ungrounded::Quote => "quote",
            Ungrounded::Note => "note",
            Ungrounded::Handoff => "handoff",
            Ungrounded::Keep => "keep",
        }
    }
}

impl Settings {
    /// Parses and checks settings as a tenant sent them: a field path and a reason on error.
    pub fn parse(json: &str) -> Result<Settings, String> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let settings: Settings = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.inner())
        })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        let r = &self.relevance;
        if !(r.min_similarity.is_finite() && (-1.0..=1.0).contains(&r.min_similarity)) {
            return Err("relevance.min_similarity: a cosine similarity, from -1 to 1".into());
        }
        if let Some(m) = r.min_lexical
            && !(m.is_finite() && m >= 0.0)
        {
            return Err("relevance.min_lexical: a BM25 score, 0 or more (or null)".into());
        }
        let g = &self.grounding;
        if !(g.max_unsupported.is_finite() && (0.0..=1.0).contains(&g.max_unsupported)) {
            return Err("grounding.max_unsupported: a share, from 0 to 1".into());
        }
        if g.note.chars().count() > 500 {
            return Err("grounding.note: at most 500 characters".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_and_refuse_what_makes_no_sense() {
        assert_eq!(Settings::parse("{}"), Ok(Settings::default()));
        let s = Settings::parse(
            r#"{"relevance": {"min_similarity": 0.3, "min_lexical": 12.5},
                "grounding": {"ungrounded": "handoff", "max_unsupported": 0}}"#,
        )
        .expect("valid");
        assert_eq!(s.relevance.min_lexical, Some(12.5));
        assert_eq!(s.grounding.ungrounded, Ungrounded::Handoff);
        for (bad, path) in [
            (
                r#"{"relevance": {"min_similarity": 2}}"#,
                "relevance.min_similarity",
            ),
            (
                r#"{"relevance": {"min_lexical": -1}}"#,
                "relevance.min_lexical",
            ),
            (
                r#"{"grounding": {"max_unsupported": 1.5}}"#,
                "grounding.max_unsupported",
            ),
            (
                r#"{"grounding": {"ungrounded": "shrug"}}"#,
                "grounding.ungrounded",
            ),
            (r#"{"relevance": {"floor": 1}}"#, "relevance"),
            (r#"{"grounding": {"note": 5}}"#, "grounding.note"),
        ] {
            let e = Settings::parse(bad).expect_err(bad);
            assert!(e.starts_with(path), "{bad}: {e}");
        }
        // Deeply nested junk is refused, not recursed into without bound.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(Settings::parse(&deep).is_err());
    }
}
