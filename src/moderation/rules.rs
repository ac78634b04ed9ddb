//! A tenant's moderation rules, compiled once per policy version and run on every message: word
//! and phrase lists (Aho-Corasick, one pass over the text), regular expressions (the `regex`
//! crate: linear time, with size limits on what a tenant may write), and detectors for personal
//! data — phone numbers, email addresses, payment card numbers (with the Luhn check).
//!
//! Each hit carries the rule's id, its action, whether the rule is in shadow mode, and the
//! character spans (Unicode scalar offsets, end exclusive) of what matched: the evidence a
//! moderator sees.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

/// Longest regular expression a tenant may write, and the compiled program's limit.
const MAX_PATTERN: usize = 1000;
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Most words in one list, and longest word.
const MAX_WORDS: usize = 5000;
const MAX_WORD: usize = 200;
/// Most rules in a policy.
pub const MAX_RULES: usize = 100;
/// Most spans kept per hit (the first ones): evidence, not an index.
const MAX_SPANS: usize = 20;

/// What a rule (or a classifier category) does to a message that hits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Record only.
    Allow,
    /// Answer, and queue for review.
    Flag,
    /// Do not answer: a person decides.
    Hold,
    /// Block the contact: nothing more is answered or sent proactively.
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Flag => "flag",
            Action::Hold => "hold",
            Action::Block => "block",
        }
    }
}

/// Kinds of personal data the detectors find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pii {
    Phone,
    Email,
    Card,
}

/// One rule as a tenant writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub id: String,
    /// Whole words or phrases, matched without regard to case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<Pii>,
    pub action: Action,
    /// Detect and record, take no action.
    #[serde(default)]
    pub shadow: bool,
    /// Which messages it applies to: `inbound`, `outbound` or `both` (default).
    #[serde(default)]
    pub applies_to: Direction,
    /// A category name for the stats (e.g. `harassment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
    #[default]
    Both,
}

impl Direction {
    fn covers(self, inbound: bool) -> bool {
        match self {
            Direction::Both => true,
            Direction::Inbound => inbound,
            Direction::Outbound => !inbound,
        }
    }
}

/// A rule that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    pub rule: String,
    pub action: Action,
    pub shadow: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// `[start, end)` in characters.
    pub spans: Vec<(usize, usize)>,
}

enum Matcher {
    Words(AhoCorasick),
    Regex(Regex),
    Pii(Pii),
}

struct Compiled {
    def: RuleDef,
    matcher: Matcher,
}

/// A policy's rules, compiled.
pub struct RuleSet {
    rules: Vec<Compiled>,
}

/// Why a rule does not compile: its index and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    pub path: String,
    pub message: String,
}

fn problem(i: usize, field: &str, message: impl Into<String>) -> RuleProblem {
    RuleProblem {
        path: format!("rules[{i}].{field}"),
        message: message.into(),
    }
}

impl RuleSet {
    pub fn empty() -> RuleSet {
        RuleSet { rules: Vec::new() }
    }

    /// Compiles every rule; all the problems found, each with its path.
    pub fn compile(defs: &[RuleDef]) -> Result<RuleSet, Vec<RuleProblem>> {
        let mut problems = Vec::new();
        let mut rules = Vec::new();
        if defs.len() > MAX_RULES {
            problems.push(RuleProblem {
                path: "rules".into(),
                message: format!("at most {MAX_RULES} rules"),
            });
            return Err(problems);
        }
        let mut ids = std::collections::HashSet::new();
        for (i, def) in defs.iter().enumerate() {
            if def.id.trim().is_empty() || def.id.len() > 64 {
                problems.push(problem(i, "id", "a rule needs an id of 1-64 bytes"));
            } else if !ids.insert(def.id.as_str()) {
                problems.push(problem(
                    i,
                    "id",
                    format!("rule id {:?} is used twice", def.id),
                ));
            }
            let kinds = usize::from(!def.words.is_empty())
                + usize::from(def.regex.is_some())
                + usize::from(def.pii.is_some());
            if kinds != 1 {
                problems.push(problem(
                    i,
                    "words",
                    "a rule has exactly one of `words`, `regex` or `pii`",
                ));
                continue;
            }
            let matcher = if let Some(pii) = def.pii {
                Matcher::Pii(pii)
            } else if let Some(pattern) = &def.regex {
                if pattern.len() > MAX_PATTERN {
                    problems.push(problem(i, "regex", format!("at most {MAX_PATTERN} bytes")));
                    continue;
                }
                match RegexBuilder::new(pattern)
                    .case_insensitive(true)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .nest_limit(50)
                    .build()
                {
                    Ok(r) => Matcher::Regex(r),
                    Err(e) => {
                        problems.push(problem(i, "regex", e.to_string()));
                        continue;
                    }
                }
            } else {
                if def.words.len() > MAX_WORDS {
                    problems.push(problem(i, "words", format!("at most {MAX_WORDS} words")));
                    continue;
                }
                if let Some(j) = def
                    .words
                    .iter()
                    .position(|w| w.trim().is_empty() || w.len() > MAX_WORD)
                {
                    problems.push(problem(
                        i,
                        &format!("words[{j}]"),
                        format!("a word or phrase of 1-{MAX_WORD} bytes"),
                    ));
                    continue;
                }
                let words: Vec<String> =
                    def.words.iter().map(|w| w.trim().to_lowercase()).collect();
                match AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&words)
                {
                    Ok(ac) => Matcher::Words(ac),
                    Err(e) => {
                        problems.push(problem(i, "words", e.to_string()));
                        continue;
                    }
                }
            };
            rules.push(Compiled {
                def: def.clone(),
                matcher,
            });
        }
        if problems.is_empty() {
            Ok(RuleSet { rules })
        } else {
            Err(problems)
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every rule that matches `text` (an inbound message, or a bot's text when `inbound` is
    /// false), in the order of the policy.
    pub fn check(&self, text: &str, inbound: bool) -> Vec<Hit> {
        let mut hits = Vec::new();
        for rule in &self.rules {
            if !rule.def.applies_to.covers(inbound) {
                continue;
            }
            let bytes: Vec<(usize, usize)> = match &rule.matcher {
                // Case is ignored for ASCII letters (the list is kept in lower case).
                Matcher::Words(ac) => ac
                    .find_iter(text)
                    .filter(|m| whole_word(text, m.start(), m.end()))
                    .map(|m| (m.start(), m.end()))
                    .take(MAX_SPANS)
                    .collect(),
                Matcher::Regex(r) => r
                    .find_iter(text)
                    .filter(|m| !m.is_empty())
                    .map(|m| (m.start(), m.end()))
                    .take(MAX_SPANS)
                    .collect(),
                Matcher::Pii(kind) => pii_spans(text, *kind),
            };
            if bytes.is_empty() {
                continue;
            }
            hits.push(Hit {
                rule: rule.def.id.clone(),
                action: rule.def.action,
                shadow: rule.def.shadow,
                category: rule.def.category.clone(),
                spans: bytes
                    .into_iter()
                    .map(|(s, e)| (char_index(text, s), char_index(text, e)))
                    .collect(),
            });
        }
        hits
    }
}

/// Characters before byte offset `at`.
fn char_index(text: &str, at: usize) -> usize {
    text.get(..at).map_or(0, |s| s.chars().count())
}

/// Whether `[start, end)` stands as whole words (no letter or digit touching either side).
fn whole_word(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
}

/// Spans of personal data of `kind`, by a single left-to-right scan.
fn pii_spans(text: &str, kind: Pii) -> Vec<(usize, usize)> {
    match kind {
        Pii::Email => emails(text),
        Pii::Phone | Pii::Card => digit_runs(text)
            .into_iter()
            .filter(|(start, end, digits)| match kind {
                Pii::Card => (13..=19).contains(&digits.len()) && luhn(digits),
                _ => {
                    (8..=15).contains(&digits.len())
                        && !((13..=19).contains(&digits.len()) && luhn(digits))
                        && !looks_like_a_date_or_amount(&text[*start..*end])
                }
            })
            .map(|(start, end, _)| (start, end))
            .take(MAX_SPANS)
            .collect(),
    }
}

/// Runs of digits joined by the separators people write in numbers (space, `-`, `.`, `(`, `)`,
/// and a leading `+`): (start, end, the digits). One pass.
fn digit_runs(text: &str) -> Vec<(usize, usize, String)> {
    let bytes = text.as_bytes();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = bytes[i].is_ascii_digit()
            || (matches!(bytes[i], b'+' | b'(')
                && bytes.get(i + 1).is_some_and(|b| b.is_ascii_digit()));
        if !starts || (i > 0 && bytes[i - 1].is_ascii_alphanumeric()) {
            i += 1;
            continue;
        }
        let start = i;
        let mut digits = String::new();
        let mut end = i;
        let mut j = i;
        while j < bytes.len() {
            let b = bytes[j];
            if b.is_ascii_digit() {
                digits.push(b as char);
                j += 1;
                end = j;
            } else if is_separator(b)
                && digits.len() < 24
                && (bytes.get(j + 1).is_some_and(u8::is_ascii_digit)
                    || (bytes.get(j + 1).copied().is_some_and(is_separator)
                        && bytes.get(j + 2).is_some_and(u8::is_ascii_digit)))
            {
                // At most two separators in a row: `) ` in `(415) 555`.
                j += 1;
            } else {
                break;
            }
        }
        if bytes.get(end).is_some_and(u8::is_ascii_alphabetic) {
            i = end.max(i + 1);
            continue;
        }
        runs.push((start, end, digits));
        i = end.max(i + 1);
    }
    runs
}

fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'-' | b'.' | b'(' | b')' | b'+')
}

/// `2026-12-03`, `12.50`, `1.000.000`: numbers that are not phone numbers.
fn looks_like_a_date_or_amount(s: &str) -> bool {
    let groups: Vec<&str> = s.split(['-', '.', ' ']).collect();
    (groups.len() == 3 && groups[0].len() == 4 && groups[1].len() == 2 && groups[2].len() == 2)
        || (s.contains('.') && !s.contains(' ') && !s.contains('-') && groups.len() <= 2)
}

/// The Luhn check of a card number's digits.
pub fn luhn(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if !i.is_multiple_of(2) {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// Email addresses: `local@domain.tld`, found around each `@` (linear: each byte is looked at a
/// bounded number of times).
fn emails(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
    let domain = |b: u8| b.is_ascii_alphanumeric() || b".-".contains(&b);
    let mut found = Vec::new();
    let mut last_end = 0;
    for (at, _) in text.match_indices('@') {
        if at < last_end {
            continue;
        }
        let mut start = at;
        while start > last_end && local(bytes[start - 1]) && at - start < 64 {
            start -= 1;
        }
        let mut end = at + 1;
        while end < bytes.len() && domain(bytes[end]) && end - at < 255 {
            end += 1;
        }
        // Trailing dots are punctuation, not the domain.
        while end > at + 1 && bytes[end - 1] == b'.' {
            end -= 1;
        }
        let host = &text[at + 1..end];
        let tld_ok = host.rsplit_once('.').is_some_and(|(name, tld)| {
            !name.is_empty() && tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic())
        });
        if start < at && tld_ok {
            found.push((start, end));
            last_end = end;
            if found.len() >= MAX_SPANS {
                break;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn rule(id: &str, json: serde_json::Value) -> RuleDef {
        let mut v = json;
        v["id"] = serde_json::Value::String(id.into());
        serde_json::from_value(v).expect("rule")
    }

    fn spans_of(text: &str, hits: &[Hit], rule: &str) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        hits.iter()
            .filter(|h| h.rule == rule)
            .flat_map(|h| h.spans.iter())
            .map(|(s, e)| chars[*s..*e].iter().collect())
            .collect()
    }

    #[test]
    fn words_regexes_and_personal_data_are_found_with_their_spans() {
        let rules = RuleSet::compile(&[
            rule("insults", serde_json::json!({ "words": ["idiot", "shut up"], "action": "flag" })),
            rule("refund", serde_json::json!({ "regex": r"\brefund(s|ed)?\b", "action": "hold", "shadow": true })),
            rule("phone", serde_json::json!({ "pii": "phone", "action": "flag", "applies_to": "outbound" })),
            rule("email", serde_json::json!({ "pii": "email", "action": "flag" })),
            rule("card", serde_json::json!({ "pii": "card", "action": "block" })),
        ])
        .expect("compiles");
        let text = "Ünïcode first: you IDIOT, shut up! Idiotic is fine. I want a Refund. \
                    Mail me at ana.p+x@example.co.uk. or call +1 (415) 555-0134; card 4111 1111 1111 1111, \
                    not 4111 1111 1111 1112, on 2026-12-03 for 12.50.";
        let hits = rules.check(text, true);
        assert_eq!(spans_of(text, &hits, "insults"), ["IDIOT", "shut up"]);
        assert_eq!(spans_of(text, &hits, "refund"), ["Refund"]);
        assert!(hits.iter().any(|h| h.rule == "refund" && h.shadow));
        assert_eq!(spans_of(text, &hits, "email"), ["ana.p+x@example.co.uk"]);
        assert_eq!(spans_of(text, &hits, "card"), ["4111 1111 1111 1111"]);
        assert!(
            spans_of(text, &hits, "phone").is_empty(),
            "the phone rule applies to outbound text only"
        );
        let outbound = rules.check(text, false);
        assert_eq!(spans_of(text, &outbound, "phone"), ["+1 (415) 555-0134"]);
        assert!(rules.check("all good here, see you at 8", true).is_empty());
    }

    #[test]
    fn bad_rules_are_refused_with_their_paths() {
        let bad = [
            (serde_json::json!({ "action": "flag" }), "rules[0].words"),
            (
                serde_json::json!({ "regex": "(", "action": "flag" }),
                "rules[0].regex",
            ),
            (
                serde_json::json!({ "regex": "a{1000}{1000}", "action": "flag" }),
                "rules[0].regex",
            ),
            (
                serde_json::json!({ "words": [""], "action": "flag" }),
                "rules[0].words[0]",
            ),
            (
                serde_json::json!({ "words": ["x"], "pii": "email", "action": "flag" }),
                "rules[0].words",
            ),
        ];
        for (def, path) in bad {
            let problems = RuleSet::compile(&[rule("r", def.clone())])
                .err()
                .expect("refused");
            assert_eq!(problems[0].path, path, "{def}: {problems:?}");
        }
        let long = "a".repeat(MAX_PATTERN + 1);
        assert!(
            RuleSet::compile(&[rule(
                "r",
                serde_json::json!({ "regex": long, "action": "flag" })
            )])
            .is_err()
        );
    }

    #[test]
    fn luhn_checks_card_numbers() {
        assert!(luhn("4111111111111111"));
        assert!(luhn("5555555555554444"));
        assert!(luhn("378282246310005"));
        assert!(!luhn("4111111111111112"));
        assert!(!luhn(""));
    }

    /// Hostile text (long runs of `@`, digits, separators, a word list's prefixes) takes time in
    /// proportion to its length.
    #[test]
    fn hostile_text_takes_linear_time() {
        let rules = RuleSet::compile(&[
            rule(
                "w",
                serde_json::json!({ "words": ["aaaa", "aaab", "ab"], "action": "flag" }),
            ),
            rule(
                "r",
                serde_json::json!({ "regex": r"(a+)+b", "action": "flag" }),
            ),
            rule("p", serde_json::json!({ "pii": "phone", "action": "flag" })),
            rule("e", serde_json::json!({ "pii": "email", "action": "flag" })),
            rule("c", serde_json::json!({ "pii": "card", "action": "flag" })),
        ])
        .expect("compiles");
        let patterns = ["a", "@", "a@", "1 ", "1-(", "+1", "a.", "1"];
        for p in patterns {
            // Best of three: the machine is shared.
            let time = |n: usize| {
                let text = p.repeat(n);
                (0..3)
                    .map(|_| {
                        let started = Instant::now();
                        let _ = rules.check(&text, true);
                        started.elapsed()
                    })
                    .min()
                    .unwrap_or_default()
            };
            let small = time(20_000).max(std::time::Duration::from_micros(200));
            let large = time(160_000);
            assert!(
                large < small * 30,
                "{p:?}: 8× the text took {:?} against {:?}",
                large,
                small
            );
        }
    }
}
