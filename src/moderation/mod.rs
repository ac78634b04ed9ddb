//! Moderation: a tenant's policy, applied to every inbound message and every bot text before it
//! is sent. This part holds the policy (what `GET`/`PUT /v1/moderation/policy` read and write,
//! validated as a whole) and its rules ([`rules`]); the classifier on the tenant's model, the
//! flag queue, hand-off and tickets build on it.
//!
//! A policy is versioned: each saved policy gets the next version, and every flag records the
//! version it was raised under, so a verdict is always read against the rules that made it.

pub mod rules;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use rules::{Action, Hit, Pii, RuleDef, RuleSet};

/// The categories the classifier is asked about (Llama Guard-style).
pub const CATEGORIES: [&str; 7] = [
    "violence",
    "self_harm",
    "sexual",
    "hate",
    "harassment",
    "illegal",
    "pii",
];

/// Longest text of the crisis message, its resources and the safe fallback.
const MAX_TEXT: usize = 2000;

/// A tenant's moderation policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub rules: Vec<RuleDef>,
    #[serde(default)]
    pub classifier: Classifier,
    #[serde(default)]
    pub crisis: Crisis,
    /// Sent instead of a bot answer that a rule or the classifier blocks.
    #[serde(default = "default_safe_fallback")]
    pub safe_fallback: String,
    /// Every rule and category in shadow mode at once: detect and record, take no action.
    #[serde(default)]
    pub shadow: bool,
}

/// The classifier on the tenant's model: per category, an action at or above a threshold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classifier {
    #[serde(default)]
    pub enabled: bool,
    /// How long a turn waits for it; slower → rules only, recorded on the flag.
    #[serde(default = "default_classifier_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_categories")]
    pub categories: BTreeMap<String, Category>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    pub action: Action,
    /// The classifier's score (0–1) from which the action applies.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    #[serde(default)]
    pub shadow: bool,
}

/// The crisis protocol: a self-harm signal is answered at once with `message` and `resources`,
/// an urgent ticket is opened, the conversation goes to a person and program nudges pause.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crisis {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_crisis_message")]
    pub message: String,
    /// Where to get help now (phone lines, links), appended to the message.
    #[serde(default = "default_resources")]
    pub resources: String,
}

fn yes() -> bool {
    true
}

fn default_threshold() -> f64 {
    0.5
}

fn default_classifier_timeout() -> u64 {
    4000
}

fn default_safe_fallback() -> String {
    "Sorry, I can't help with that here. A person from the team can pick this up if you ask for one (/human).".into()
}

fn default_crisis_message() -> String {
    "I'm really sorry you're going through this. You don't have to face it alone: a person from our team will reply here as soon as they can. If you are in danger right now, please contact emergency services or a crisis line.".into()
}

fn default_resources() -> String {
    "In an emergency call your local emergency number (112 in Europe, 911 in the US). You can find a crisis line near you at https://findahelpline.com.".into()
}

fn default_categories() -> BTreeMap<String, Category> {
    let category = |action| Category {
        action,
        threshold: default_threshold(),
        shadow: false,
    };
    BTreeMap::from([
        ("violence".to_owned(), category(Action::Flag)),
        ("self_harm".to_owned(), category(Action::Hold)),
        ("sexual".to_owned(), category(Action::Hold)),
        ("hate".to_owned(), category(Action::Block)),
        ("harassment".to_owned(), category(Action::Flag)),
        ("illegal".to_owned(), category(Action::Hold)),
    ])
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier {
            enabled: false,
            timeout_ms: default_classifier_timeout(),
            categories: default_categories(),
        }
    }
}

impl Default for Crisis {
    fn default() -> Self {
        Crisis {
            enabled: true,
            message: default_crisis_message(),
            resources: default_resources(),
        }
    }
}

impl Default for Policy {
    /// What a new tenant has (SPEC §5): the crisis protocol on, no rules of its own, the
    /// classifier off until the tenant turns it on.
    fn default() -> Self {
        Policy {
            rules: Vec::new(),
            classifier: Classifier::default(),
            crisis: Crisis::default(),
            safe_fallback: default_safe_fallback(),
            shadow: false,
        }
    }
}

/// One problem with a policy: where and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// A policy that parsed and validated, with its rules compiled.
pub struct Compiled {
    pub policy: Policy,
    pub rules: RuleSet,
}

impl Compiled {
    /// Parses and validates JSON: every problem found, each with its path.
    pub fn parse(json: &serde_json::Value) -> Result<Compiled, Vec<Problem>> {
        let policy: Policy = serde_path_to_error::deserialize(json).map_err(|e| {
            let path = e.path().to_string();
            vec![Problem {
                path: if path == "." { String::new() } else { path },
                message: e.into_inner().to_string(),
            }]
        })?;
        Compiled::new(policy)
    }

    pub fn new(policy: Policy) -> Result<Compiled, Vec<Problem>> {
        let mut problems = Vec::new();
        let rules = match RuleSet::compile(&policy.rules) {
            Ok(r) => Some(r),
            Err(found) => {
                problems.extend(found.into_iter().map(|p| Problem {
                    path: p.path,
                    message: p.message,
                }));
                None
            }
        };
        for (name, c) in &policy.classifier.categories {
            let path = format!("classifier.categories.{name}");
            if !CATEGORIES.contains(&name.as_str()) {
                problems.push(Problem {
                    path,
                    message: format!("unknown category (one of {})", CATEGORIES.join(", ")),
                });
            } else if !(0.0..=1.0).contains(&c.threshold) {
                problems.push(Problem {
                    path: format!("{path}.threshold"),
                    message: "a score from 0 to 1".into(),
                });
            }
        }
        if !(100..=60_000).contains(&policy.classifier.timeout_ms) {
            problems.push(Problem {
                path: "classifier.timeout_ms".into(),
                message: "100 to 60000 milliseconds".into(),
            });
        }
        for (path, text) in [
            ("crisis.message", &policy.crisis.message),
            ("crisis.resources", &policy.crisis.resources),
            ("safe_fallback", &policy.safe_fallback),
        ] {
            if text.len() > MAX_TEXT {
                problems.push(Problem {
                    path: path.into(),
                    message: format!("at most {MAX_TEXT} bytes"),
                });
            }
        }
        if policy.crisis.enabled && policy.crisis.message.trim().is_empty() {
            problems.push(Problem {
                path: "crisis.message".into(),
                message: "the crisis protocol needs a message (or `enabled: false`)".into(),
            });
        }
        if policy.safe_fallback.trim().is_empty() {
            problems.push(Problem {
                path: "safe_fallback".into(),
                message: "a text to send instead of a blocked answer".into(),
            });
        }
        match rules {
            Some(rules) if problems.is_empty() => Ok(Compiled { policy, rules }),
            _ => Err(problems),
        }
    }

    /// The crisis text as sent: the message, then the resources.
    pub fn crisis_text(&self) -> String {
        let c = &self.policy.crisis;
        if c.resources.trim().is_empty() {
            c.message.clone()
        } else {
            format!("{}\n\n{}", c.message.trim_end(), c.resources.trim())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_default_policy_is_valid_and_has_the_crisis_protocol_on() {
        let compiled = Compiled::new(Policy::default()).expect("valid");
        assert!(compiled.policy.crisis.enabled);
        assert!(compiled.rules.is_empty());
        assert!(compiled.crisis_text().contains("crisis line"));
        // An empty object is the default too.
        let parsed = Compiled::parse(&json!({})).expect("valid");
        assert_eq!(
            parsed.policy.classifier.categories["self_harm"].action,
            Action::Hold
        );
    }

    #[test]
    fn invalid_policies_name_the_path_of_each_error() {
        for (policy, path) in [
            (
                json!({ "rules": [ { "id": "r", "regex": "(", "action": "flag" } ] }),
                "rules[0].regex",
            ),
            (
                json!({ "rules": [ { "id": "r", "words": ["x"], "action": "shout" } ] }),
                "rules[0].action",
            ),
            (
                json!({ "classifier": { "categories": { "spam": { "action": "flag" } } } }),
                "classifier.categories.spam",
            ),
            (
                json!({ "classifier": { "categories": { "hate": { "action": "block", "threshold": 2 } } } }),
                "classifier.categories.hate.threshold",
            ),
            (
                json!({ "classifier": { "timeout_ms": 5 } }),
                "classifier.timeout_ms",
            ),
            (json!({ "crisis": { "message": " " } }), "crisis.message"),
            (json!({ "safe_fallback": "" }), "safe_fallback"),
            (json!({ "nonsense": true }), "nonsense"),
        ] {
            let problems = Compiled::parse(&policy).err().expect("refused");
            assert_eq!(problems[0].path, path, "{policy}: {problems:?}");
        }
    }
}
