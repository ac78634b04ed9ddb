//! The grounding check: does a written answer stand on the passages it cites?
//!
//! After generation (on the complete answer, before it is stored), the answer is cut into
//! sentences (Unicode sentence boundaries, `unicode-segmentation`); each sentence with at least
//! three content words is checked against the passages the answer cites: supported when most of
//! its content words occur in them (lexical), or when its embedding is near one of their
//! sentences' (with the knowledge's embedding model). An answer that cites nothing, or leaves
//! more than the tenant's share of its sentences unsupported, is *ungrounded*; what then happens
//! is the tenant's policy ([`crate::knowledge::settings::Ungrounded`]). The result is recorded on
//! the message ([`Grounding`]).

use std::collections::HashSet;

use serde::Serialize;
use unicode_segmentation::UnicodeSegmentation;

use crate::knowledge::Hit;
use crate::llm::Embedder;

/// Share of a sentence's content words found in the cited passages for it to count as
/// supported by words.
pub const LEXICAL_SUPPORT: f32 = 0.5;
/// Cosine similarity of a sentence to one of the cited passages' sentences for it to count as
/// supported by meaning (all-MiniLM-L6-v2: paraphrases score 0.6–0.9, related sentences on
/// other points 0.3–0.5).
pub const SEMANTIC_SUPPORT: f32 = 0.6;
/// Sentences with fewer content words than this are not checked ("Sure!", "Hope this helps.").
const MIN_WORDS: usize = 3;
/// Sentences checked at most (an answer is capped in tokens anyway).
const MAX_SENTENCES: usize = 64;
/// Passage sentences embedded at most.
const MAX_PASSAGE_SENTENCES: usize = 256;

/// How an answer stood against its sources (stored on the message as JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Grounding {
    /// The source numbers the answer cites.
    pub cited: Vec<usize>,
    /// Sentences in the answer, and those checked (long enough to say something).
    pub sentences: usize,
    pub checked: usize,
    /// Checked sentences the cited passages do not support.
    pub unsupported: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsupported_sentences: Vec<String>,
    /// `lexical` or `lexical+embedding`: how support was judged.
    pub method: &'static str,
    pub grounded: bool,
    /// Why not grounded: `cites_nothing` or `unsupported`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// What the tenant's policy did: `none`, `quote`, `note`, `handoff` or `keep`.
    pub action: &'static str,
}

/// The sentences of `text`, trimmed, without the citation markers.
pub fn sentences(text: &str) -> Vec<String> {
    text.unicode_sentences()
        .map(|s| strip_markers(s).trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What follows a `[`, when it is a citation marker: the numbers inside (at most 20 bytes of
/// digits, commas and spaces) and the byte length up to and including the `]`. Only a bounded
/// window is looked at, so scanning a text of many `[` stays linear.
pub fn marker(after: &str) -> Option<(&str, usize)> {
    let window = &after.as_bytes()[..after.len().min(21)];
    let close = window.iter().position(|&b| b == b']')?;
    let inside = &after[..close];
    inside
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b',' || b == b' ')
        .then_some((inside, close + 1))
}

/// `text` without `[n]`, `[1, 2]` markers.
fn strip_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match marker(after) {
            Some((_, len)) => rest = &after[len..],
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

const STOP: &[&str] = &[
    "the", "and", "for", "are", "but", "not", "you", "your", "yours", "with", "this", "that",
    "these", "those", "from", "have", "has", "had", "was", "were", "will", "would", "can", "could",
    "should", "may", "might", "must", "shall", "there", "their", "them", "they", "then", "than",
    "what", "which", "who", "whom", "when", "where", "why", "how", "all", "any", "each", "some",
    "such", "into", "onto", "over", "under", "about", "also", "just", "only", "very", "more",
    "most", "other", "its", "it's", "our", "out", "off", "own", "same", "too", "been", "being",
    "does", "did", "doing", "here", "him", "his", "her", "hers", "she", "one", "get", "got", "yes",
    "use", "using", "like", "make", "need", "way", "well", "sure",
];

/// Content words: lower-case, three letters or more, not a stop word, a plural `s` dropped.
fn words(text: &str) -> Vec<String> {
    text.unicode_words()
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() >= 3 && !STOP.contains(&w.as_str()))
        .map(|w| {
            if w.len() > 4 && w.ends_with('s') && !w.ends_with("ss") {
                w[..w.len() - 1].to_owned()
            } else {
                w
            }
        })
        .collect()
}

/// The share of `sentence`'s content words that occur in `vocabulary`.
fn lexical_support(sentence: &[String], vocabulary: &HashSet<String>) -> f32 {
    if sentence.is_empty() {
        return 0.0;
    }
    let found = sentence.iter().filter(|w| vocabulary.contains(*w)).count();
    found as f32 / sentence.len() as f32
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Checks `answer` against the passages it cites (`cited`: source numbers into `sources`).
/// `max_unsupported` is the share of checked sentences allowed unsupported. With `embedder`,
/// a sentence the words do not support may still be supported by meaning; an embedder that
/// fails leaves the words alone to decide.
pub async fn check(
    answer: &str,
    cited: &[usize],
    sources: &[Hit],
    max_unsupported: f64,
    embedder: Option<&dyn Embedder>,
) -> Grounding {
    let all = sentences(answer);
    let passages: Vec<&Hit> = cited
        .iter()
        .filter_map(|n| n.checked_sub(1).and_then(|i| sources.get(i)))
        .collect();
    let mut result = Grounding {
        cited: cited.to_vec(),
        sentences: all.len(),
        checked: 0,
        unsupported: 0,
        unsupported_sentences: Vec::new(),
        method: "lexical",
        grounded: false,
        reason: None,
        action: "none",
    };
    if passages.is_empty() {
        result.reason = Some("cites_nothing");
        return result;
    }
    let vocabulary: HashSet<String> = passages
        .iter()
        .flat_map(|p| words(&format!("{}\n{}\n{}", p.title, p.heading, p.text)))
        .collect();
    let checked: Vec<(&String, Vec<String>)> = all
        .iter()
        .map(|s| (s, words(s)))
        .filter(|(_, w)| w.len() >= MIN_WORDS)
        .take(MAX_SENTENCES)
        .collect();
    result.checked = checked.len();
    let mut unsupported: Vec<&String> = checked
        .iter()
        .filter(|(_, w)| lexical_support(w, &vocabulary) < LEXICAL_SUPPORT)
        .map(|(s, _)| *s)
        .collect();
    if let Some(embedder) = embedder
        && !unsupported.is_empty()
    {
        let passage_sentences: Vec<String> = passages
            .iter()
            .flat_map(|p| sentences(&p.text))
            .filter(|s| words(s).len() >= MIN_WORDS)
            .take(MAX_PASSAGE_SENTENCES)
            .collect();
        let mut inputs: Vec<String> = unsupported.iter().map(|s| (*s).clone()).collect();
        let asked = inputs.len();
        inputs.extend(passage_sentences);
        match embedder.embed(&inputs).await {
            Ok(vectors) if vectors.len() == inputs.len() => {
                result.method = "lexical+embedding";
                let (questions, evidence) = vectors.split_at(asked);
                let near: Vec<bool> = questions
                    .iter()
                    .map(|q| evidence.iter().any(|e| cosine(q, e) >= SEMANTIC_SUPPORT))
                    .collect();
                let mut i = 0;
                unsupported.retain(|_| {
                    let keep = !near[i];
                    i += 1;
                    keep
                });
            }
            Ok(_) => tracing::warn!(
                "the embedding model returned a wrong count; grounding by words alone"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "embedding for the grounding check failed; grounding by words alone")
            }
        }
    }
    result.unsupported = unsupported.len();
    result.unsupported_sentences = unsupported.into_iter().cloned().collect();
    let share = if result.checked == 0 {
        0.0
    } else {
        result.unsupported as f64 / result.checked as f64
    };
    if share > max_unsupported {
        result.reason = Some("unsupported");
    } else {
        result.grounded = true;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(text: &str) -> Hit {
        Hit {
            document_id: "d".into(),
            title: "Sleep".into(),
            chunk: 0,
            heading: "Sleep".into(),
            text: text.into(),
            score: 1.0,
            similarity: None,
        }
    }

    #[test]
    fn sentences_drop_markers_and_keep_brackets_that_are_not_markers() {
        assert_eq!(
            sentences("Keep a fixed wake time [1]. Dim the lights [1, 2]! See [the guide]."),
            [
                "Keep a fixed wake time .",
                "Dim the lights !",
                "See [the guide]."
            ]
        );
        assert_eq!(
            strip_markers("a [12345678901234567890123] b"),
            "a [12345678901234567890123] b"
        );
    }

    #[tokio::test]
    async fn a_sentence_the_passage_says_is_supported_and_an_invented_one_is_not() {
        let sources = [hit(
            "Keep the same wake-up time every day, even at weekends. Avoid caffeine after noon.",
        )];
        let g = check(
            "Wake up at the same time every day, weekends included [1]. Avoid caffeine after noon [1].",
            &[1],
            &sources,
            0.0,
            None,
        )
        .await;
        assert!(g.grounded, "{g:?}");
        assert_eq!((g.checked, g.unsupported), (2, 0));

        let g = check(
            "Avoid caffeine after noon [1]. Paris is the capital of France and has many museums.",
            &[1],
            &sources,
            0.0,
            None,
        )
        .await;
        assert!(!g.grounded);
        assert_eq!(g.reason, Some("unsupported"));
        assert_eq!(
            g.unsupported_sentences,
            ["Paris is the capital of France and has many museums."]
        );
        // Half unsupported is within a 0.5 allowance.
        let g = check(
            "Avoid caffeine after noon [1]. Paris is the capital of France and has many museums.",
            &[1],
            &sources,
            0.5,
            None,
        )
        .await;
        assert!(g.grounded);

        let g = check("The capital of France is Paris.", &[], &sources, 0.5, None).await;
        assert_eq!((g.grounded, g.reason), (false, Some("cites_nothing")));
    }

    #[tokio::test]
    async fn hostile_answers_are_checked_in_bounded_time() {
        let sources = [hit("Sleep well.")];
        // A huge answer of unclosed brackets and one giant "sentence".
        let text = "[".repeat(200_000) + &"word ".repeat(50_000);
        let started = std::time::Instant::now();
        let g = check(&text, &[1], &sources, 0.5, None).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(g.checked <= MAX_SENTENCES);
        let many = "Unrelated words appear here. ".repeat(10_000);
        let g = check(&many, &[1], &sources, 0.5, None).await;
        assert_eq!(g.checked, MAX_SENTENCES);
    }
}
