//! Moderation: a tenant's policy, applied to every inbound message and every bot text before it
//! is sent. This part holds the policy (what `GET`/`PUT /v1/moderation/policy` read and write,
//! validated as a whole) and its rules ([`rules`]); the classifier on the tenant's model, the
//! flag queue, hand-off and tickets build on it.
//!
//! A policy is versioned: each saved policy gets the next version, and every flag records the
//! version it was raised under, so a verdict is always read against the rules that made it.

pub mod classifier;
pub mod hours;
pub mod rules;
pub mod screen;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::counter;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::answer::AnswerKind;
use crate::store::messages::PendingTurn;
use crate::store::moderation as store;
use crate::store::{WriteTx, now_ms};

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
    /// When the bot hands a conversation to a person by itself.
    #[serde(default)]
    pub handoff: Handoff,
}

/// Hand-off policies: a contact who asks for a person in plain words ("can I talk to a real
/// person?", not only `/human`) is handed over with a ticket and told so.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    #[serde(default = "yes")]
    pub on_request: bool,
    /// Hand over when the knowledge has nothing relevant (the bot's "I don't know").
    #[serde(default)]
    pub no_answer: bool,
    /// Hand over after this many answers in a row that were not from the knowledge (no answer,
    /// the model down or failing); 0: never.
    #[serde(default)]
    pub after_fallbacks: u32,
    /// The bot takes a handed-over conversation back after this many minutes without a message
    /// from a person in it (counted from the hand-off, then from the person's last message);
    /// 0: never, a person hands it back.
    #[serde(default)]
    pub timeout_minutes: u32,
    /// What the contact is told when the conversation goes to a person.
    #[serde(default = "default_handoff_message")]
    pub message: String,
    /// The team's hours: outside them the contact is told when a person will be back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_hours: Option<hours::BusinessHours>,
}

fn default_handoff_message() -> String {
    "I've asked a person from the team to take over. They will answer here; until then I'll stay quiet.".into()
}

impl Default for Handoff {
    fn default() -> Self {
        Handoff {
            on_request: true,
            no_answer: false,
            after_fallbacks: 0,
            timeout_minutes: 0,
            message: default_handoff_message(),
            business_hours: None,
        }
    }
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
    /// Also classify the bot's answers (each answer then waits for it, and the widget shows no
    /// streamed preview: a sentence cannot be shown before the whole answer is judged).
    #[serde(default)]
    pub outbound: bool,
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
            outbound: false,
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
            handoff: Handoff::default(),
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
    pub hours: Option<hours::Hours>,
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
            ("handoff.message", &policy.handoff.message),
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
        if policy.handoff.timeout_minutes > 10_080 {
            problems.push(Problem {
                path: "handoff.timeout_minutes".into(),
                message: "0 (never) to 10080 (a week)".into(),
            });
        }
        if policy.handoff.after_fallbacks > 20 {
            problems.push(Problem {
                path: "handoff.after_fallbacks".into(),
                message: "0 (never) to 20".into(),
            });
        }
        let hands_over = policy.handoff.on_request
            || policy.handoff.no_answer
            || policy.handoff.after_fallbacks > 0;
        if hands_over && policy.handoff.message.trim().is_empty() {
            problems.push(Problem {
                path: "handoff.message".into(),
                message:
                    "what the contact is told when a person takes over (or `on_request: false`)"
                        .into(),
            });
        }
        let hours = policy
            .handoff
            .business_hours
            .as_ref()
            .and_then(|h| hours::Hours::new(h, "handoff.business_hours", &mut problems));
        if policy.safe_fallback.trim().is_empty() {
            problems.push(Problem {
                path: "safe_fallback".into(),
                message: "a text to send instead of a blocked answer".into(),
            });
        }
        match rules {
            Some(rules) if problems.is_empty() => Ok(Compiled {
                policy,
                rules,
                hours,
            }),
            _ => Err(problems),
        }
    }

    /// What the contact is told when a person takes over at `now`: the hand-off message, or
    /// outside business hours the closed message with the next opening.
    pub fn handoff_text(&self, now: i64) -> String {
        self.hours
            .as_ref()
            .and_then(|h| h.closed_text(now))
            .unwrap_or_else(|| self.policy.handoff.message.clone())
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

/// Built-in crisis signals (self-harm, in the languages our users write in), checked whenever
/// the tenant's crisis protocol is on — whatever its own rules say — so that a new tenant is
/// covered from its first message. Whole words and phrases, without regard to case.
const CRISIS_PHRASES: &[&str] = &[
    "kill myself",
    "killing myself",
    "end my life",
    "ending my life",
    "take my own life",
    "suicide",
    "suicidal",
    "want to die",
    "wanna die",
    "don't want to live",
    "dont want to live",
    "don't want to be alive",
    "don't want to wake up",
    "dont want to wake up",
    "not wake up",
    "better off without me",
    "better off dead",
    "hurt myself",
    "hurting myself",
    "cutting myself",
    "cutting again",
    "self harm",
    "self-harm",
    "end it all",
    "want to end it",
    "no reason to live",
    "won't be around next week",
    "take them all",
    "jump off the bridge",
    "overdose",
    "quiero morir",
    "quiero morirme",
    "no quiero seguir viviendo",
    "suicidarme",
    "quitarme la vida",
    "quero morrer",
    "me matar",
    "não quero mais viver",
    "me suicider",
    "envie de mourir",
    "veux mourir",
    "mich umbringen",
    "will sterben",
    "nicht mehr leben",
    "jeena nahi chahta",
    "jeena nahi chahti",
    "mar jaana chahta",
    "mar jaana chahti",
    "khudkushi",
    "sab khatam karna hai",
];

/// A contact asking for a person in plain words (the hand-off policy `on_request`).
const PERSON_PHRASES: &[&str] = &[
    "talk to a human",
    "speak to a human",
    "talk to a person",
    "speak to a person",
    "talk to a real person",
    "speak to a real person",
    "talk to someone real",
    "a real person",
    "a real human",
    "human agent",
    "live agent",
    "talk to an agent",
    "speak to an agent",
    "talk to a representative",
    "speak to a representative",
    "customer service",
    "hablar con una persona",
    "hablar con un humano",
    "falar com uma pessoa",
    "falar com um humano",
    "parler à un humain",
    "parler a un humain",
    "parler à quelqu'un",
    "mit einem menschen sprechen",
    "mit einem mitarbeiter sprechen",
];

/// How long a tenant's compiled policy is reused before the store is asked again (a `PUT`
/// through this process takes effect at once).
const POLICY_TTL: Duration = Duration::from_secs(5);

/// A tenant's policy as the router uses it: compiled, with the built-in crisis signals.
pub struct Active {
    /// 0: the default policy (the tenant saved none).
    pub version: i64,
    pub compiled: Compiled,
    crisis: RuleSet,
    person: RuleSet,
}

/// What the policy decided about one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The strongest action of the hits that are not in shadow mode (`allow` when none).
    pub action: Action,
    /// A self-harm signal with the crisis protocol on.
    pub crisis: bool,
    /// Every hit, shadow ones included: the flag's evidence.
    pub hits: Vec<Hit>,
    pub policy_version: i64,
}

impl Verdict {
    /// Whether the text is to be recorded as a flag (a hit of any kind).
    pub fn flagged(&self) -> bool {
        !self.hits.is_empty()
    }

    /// Only shadow hits: recorded, nothing done.
    pub fn shadow_only(&self) -> bool {
        !self.hits.is_empty() && self.hits.iter().all(|h| h.shadow)
    }
}

impl Active {
    pub fn new(version: i64, compiled: Compiled) -> Active {
        let crisis = RuleSet::compile(&[RuleDef {
            id: "crisis".into(),
            words: CRISIS_PHRASES.iter().map(|p| (*p).to_owned()).collect(),
            regex: None,
            pii: None,
            action: Action::Hold,
            shadow: false,
            applies_to: rules::Direction::Inbound,
            category: Some("self_harm".into()),
        }])
        .unwrap_or_else(|_| RuleSet::empty());
        let person = RuleSet::compile(&[RuleDef {
            id: "person".into(),
            words: PERSON_PHRASES.iter().map(|p| (*p).to_owned()).collect(),
            regex: None,
            pii: None,
            action: Action::Allow,
            shadow: false,
            applies_to: rules::Direction::Inbound,
            category: None,
        }])
        .unwrap_or_else(|_| RuleSet::empty());
        Active {
            version,
            compiled,
            crisis,
            person,
        }
    }

    /// Whether a contact's message asks for a person (and the policy hands over on request).
    pub fn asks_for_person(&self, text: &str) -> bool {
        self.compiled.policy.handoff.on_request && !self.person.check(text, true).is_empty()
    }

    /// Runs the rules (and, inbound, the crisis signals) on a text.
    pub fn check(&self, text: &str, inbound: bool) -> Verdict {
        let policy = &self.compiled.policy;
        let mut hits = self.compiled.rules.check(text, inbound);
        if policy.shadow {
            for h in &mut hits {
                h.shadow = true;
            }
        }
        let mut crisis = false;
        if inbound && policy.crisis.enabled {
            let found = self.crisis.check(text, true);
            crisis = !found.is_empty();
            hits.extend(found);
        }
        let action = hits
            .iter()
            .filter(|h| !h.shadow)
            .map(|h| h.action)
            .max()
            .unwrap_or(Action::Allow);
        Verdict {
            action,
            crisis,
            hits,
            policy_version: self.version,
        }
    }
}

impl Active {
    /// Whether the classifier is to be asked about a text in this direction.
    pub fn classifies(&self, inbound: bool) -> bool {
        let c = &self.compiled.policy.classifier;
        c.enabled && (inbound || c.outbound)
    }

    /// Whether a rule can hold or block a bot answer (one that acts, on outbound text).
    pub fn stops_answers(&self) -> bool {
        let policy = &self.compiled.policy;
        !policy.shadow
            && policy.rules.iter().any(|r| {
                !r.shadow
                    && matches!(r.action, Action::Hold | Action::Block)
                    && r.applies_to != rules::Direction::Inbound
            })
    }

    /// The policy's categories, in order (what the classifier is asked about).
    pub fn categories(&self) -> Vec<&str> {
        self.compiled
            .policy
            .classifier
            .categories
            .keys()
            .map(String::as_str)
            .collect()
    }

    /// Adds the classifier's findings to a verdict: each category scored at or above its
    /// threshold is a hit (`classifier:<category>`, no spans) with the category's action and
    /// shadow mode; `self_harm` on an inbound message starts the crisis protocol.
    pub fn merge(&self, verdict: &mut Verdict, found: &classifier::Classification, inbound: bool) {
        let policy = &self.compiled.policy;
        for (name, score) in &found.scores {
            let Some(category) = policy.classifier.categories.get(name) else {
                continue;
            };
            if *score < category.threshold {
                continue;
            }
            let shadow = category.shadow || policy.shadow;
            if name == "self_harm" && inbound && policy.crisis.enabled && !shadow {
                verdict.crisis = true;
            }
            verdict.hits.push(Hit {
                rule: format!("classifier:{name}"),
                action: category.action,
                shadow,
                category: Some(name.clone()),
                spans: Vec::new(),
            });
        }
        verdict.action = verdict
            .hits
            .iter()
            .filter(|h| !h.shadow)
            .map(|h| h.action)
            .max()
            .unwrap_or(Action::Allow);
    }
}

/// The tenants' policies, compiled once per version and cached briefly.
pub struct Moderation {
    store: crate::store::Store,
    cache: Mutex<HashMap<String, (Instant, Arc<Active>)>>,
    /// The classifier on the gateway's chat model (none without a model).
    classifier: Option<classifier::Classifier>,
}

impl Moderation {
    pub fn new(store: crate::store::Store) -> Moderation {
        Moderation {
            store,
            cache: Mutex::new(HashMap::new()),
            classifier: None,
        }
    }

    /// With the classifier on `model` (the chat model answers use, behind the same guard).
    pub fn with_classifier(
        mut self,
        model: Option<Arc<crate::llm::guard::Guarded>>,
    ) -> anyhow::Result<Moderation> {
        self.classifier = model.map(classifier::Classifier::new).transpose()?;
        Ok(self)
    }

    /// The rules, and the classifier when the policy asks for it in this direction: the
    /// verdict, and the classification (`None` when the classifier was not asked).
    pub async fn judge(
        &self,
        active: &Active,
        text: &str,
        inbound: bool,
    ) -> (Verdict, Option<classifier::Classification>) {
        let mut verdict = active.check(text, inbound);
        if !active.classifies(inbound) {
            return (verdict, None);
        }
        let found = match &self.classifier {
            Some(c) => {
                let timeout = Duration::from_millis(active.compiled.policy.classifier.timeout_ms);
                c.classify(text, &active.categories(), timeout).await
            }
            None => classifier::no_model(),
        };
        active.merge(&mut verdict, &found, inbound);
        (verdict, Some(found))
    }

    /// The tenant's active policy (the default when it saved none, or when the saved one no
    /// longer compiles — it was validated when saved, so that would be a bug, and it is logged).
    pub async fn active(&self, tenant_id: &str) -> anyhow::Result<Arc<Active>> {
        if let Some((at, active)) = lock(&self.cache).get(tenant_id)
            && at.elapsed() < POLICY_TTL
        {
            return Ok(active.clone());
        }
        let active = match self.store.moderation_policy(tenant_id).await? {
            Some((version, text)) => {
                let parsed = serde_json::from_str::<serde_json::Value>(&text)
                    .map_err(|e| {
                        vec![Problem {
                            path: String::new(),
                            message: e.to_string(),
                        }]
                    })
                    .and_then(|v| Compiled::parse(&v));
                match parsed {
                    Ok(compiled) => Active::new(version, compiled),
                    Err(problems) => {
                        tracing::error!(
                            tenant = tenant_id,
                            version,
                            ?problems,
                            "a saved moderation policy does not compile; using the default"
                        );
                        Active::new(
                            0,
                            Compiled::new(Policy::default())
                                .map_err(|p| anyhow::anyhow!("{p:?}"))?,
                        )
                    }
                }
            }
            None => Active::new(
                0,
                Compiled::new(Policy::default()).map_err(|p| anyhow::anyhow!("{p:?}"))?,
            ),
        };
        let active = Arc::new(active);
        lock(&self.cache).insert(tenant_id.to_owned(), (Instant::now(), active.clone()));
        Ok(active)
    }

    /// Gives back to the bot the conversations whose person has been silent longer than their
    /// tenant's `handoff.timeout_minutes`; how many.
    pub async fn resume_stale(&self, now: i64) -> anyhow::Result<usize> {
        let mut resumed = 0;
        for (tenant_id, text) in self.store.current_moderation_policies().await? {
            let Ok(policy) = serde_json::from_str::<Policy>(&text) else {
                continue;
            };
            let minutes = i64::from(policy.handoff.timeout_minutes);
            if minutes == 0 {
                continue;
            }
            let mut w = self.store.begin_write().await?;
            let ids = store::resume_stale_handoffs(&mut w, &tenant_id, now - minutes * 60_000, now)
                .await?;
            w.commit().await?;
            counter!("switchboard_handoffs_resumed_total").increment(ids.len() as u64);
            resumed += ids.len();
        }
        Ok(resumed)
    }

    /// Runs [`Moderation::resume_stale`] every minute until `shutdown`.
    pub fn spawn(
        self: &Arc<Self>,
        tracker: &tokio_util::task::TaskTracker,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let this = self.clone();
        tracker.spawn(async move {
            loop {
                if let Err(e) = this.resume_stale(now_ms()).await {
                    tracing::warn!(error = %format!("{e:#}"), "resuming timed-out hand-offs failed");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
        });
    }

    /// How a streamed answer may be previewed under the tenant's policy.
    pub async fn preview(&self, tenant_id: &str) -> anyhow::Result<Preview> {
        let active = self.active(tenant_id).await?;
        Ok(if active.classifies(false) {
            Preview::None
        } else if active.stops_answers() {
            Preview::Screened(active)
        } else {
            Preview::Direct
        })
    }

    /// Forgets a tenant's cached policy (it saved a new one).
    pub fn invalidate(&self, tenant_id: &str) {
        lock(&self.cache).remove(tenant_id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the widget may preview an answer while it is written.
pub enum Preview {
    /// As it comes: nothing in the policy can stop an answer.
    Direct,
    /// Whole sentences the outbound rules passed ([`screen::Screen`]).
    Screened(Arc<Active>),
    /// Not at all ("typing…" only): the classifier judges whole answers.
    None,
}

/// What moderation decided about an inbound turn, for the router.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Go on as usual (nothing found, a flag raised for review, or shadow hits recorded).
    Continue,
    /// Answer with this text and nothing else (the crisis protocol).
    Reply(String),
    /// Do not answer (held for a person, or the contact is blocked).
    Silent,
}

/// What moderation decided about a bot answer before it is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// Send it as it is (perhaps flagged for review).
    Send,
    /// Send this text instead (the answer was blocked: the tenant's safe fallback).
    Replace(String),
    /// Send nothing: a person decides (the answer is in the flag's evidence).
    Hold,
}

/// SLA targets per priority: (first response, resolution), in ms.
pub fn sla(priority: &str) -> (i64, i64) {
    const MIN: i64 = 60_000;
    match priority {
        "urgent" => (15 * MIN, 4 * 60 * MIN),
        "high" => (60 * MIN, 8 * 60 * MIN),
        "low" => (24 * 60 * MIN, 5 * 24 * 60 * MIN),
        _ => (4 * 60 * MIN, 24 * 60 * MIN),
    }
}

impl Moderation {
    /// Checks a contact's message before anything answers it, and does what the policy says:
    /// records the flag with its evidence; for a crisis, opens an urgent ticket, hands the
    /// conversation to a person and cancels the contact's pending nudges (the safe message is
    /// the turn's reply); for `hold`, a ticket and the hand-off; for `block`, the contact is
    /// blocked. Idempotent: a turn run again after a crash finds its flag and does nothing twice.
    pub async fn inbound(&self, turn: &PendingTurn) -> anyhow::Result<Inbound> {
        if turn.contact_blocked {
            return Ok(Inbound::Silent);
        }
        if turn.text.trim().is_empty() {
            return Ok(Inbound::Continue);
        }
        let active = self.active(&turn.tenant_id).await?;
        let (verdict, classification) = self.judge(&active, &turn.text, true).await;
        let asks_for_person =
            turn.conversation_status == "bot" && active.asks_for_person(&turn.text);
        if !verdict.flagged() {
            if asks_for_person {
                let mut w = self.store.begin_write().await?;
                let decided = self.on_request(&mut w, turn, &active).await?;
                w.commit().await?;
                return Ok(decided);
            }
            return Ok(Inbound::Continue);
        }
        let shadow = verdict.shadow_only();
        let action = if verdict.crisis {
            "crisis"
        } else if shadow {
            verdict
                .hits
                .iter()
                .map(|h| h.action)
                .max()
                .unwrap_or(Action::Allow)
                .as_str()
        } else {
            verdict.action.as_str()
        };
        let evidence = json!({
            "text": turn.text,
            "hits": verdict.hits,
            "policy_version": verdict.policy_version,
            "classifier": classification,
            "crisis": verdict.crisis,
        });
        let now = now_ms();
        let mut w = self.store.begin_write().await?;
        let (flag_id, new) = store::insert_flag(
            &mut w,
            store::NewFlag {
                tenant_id: &turn.tenant_id,
                conversation_id: &turn.conversation_id,
                contact_id: &turn.contact_id,
                message_id: &turn.message_id,
                direction: "inbound",
                action,
                shadow,
                policy_version: verdict.policy_version,
                evidence: &evidence,
            },
            now,
        )
        .await?;
        counter!("switchboard_flags_total", "action" => action, "shadow" => if shadow { "yes" } else { "no" })
            .increment(u64::from(new));
        let decided = if verdict.crisis {
            if new {
                self.escalate(
                    &mut w,
                    turn,
                    Some(&flag_id),
                    "crisis",
                    "urgent",
                    "Crisis signal",
                    now,
                )
                .await?;
                sqlx::query(
                    "UPDATE fire SET status = 'cancelled', reason = 'crisis', done_at = $1
                     WHERE contact_id = $2 AND kind = 'nudge' AND status = 'pending'",
                )
                .bind(now)
                .bind(&turn.contact_id)
                .execute(&mut *w.tx)
                .await?;
            }
            Inbound::Reply(active.compiled.crisis_text())
        } else if shadow {
            Inbound::Continue
        } else {
            match verdict.action {
                Action::Allow | Action::Flag => Inbound::Continue,
                Action::Hold => {
                    if new {
                        self.escalate(
                            &mut w,
                            turn,
                            Some(&flag_id),
                            "moderation_hold",
                            "high",
                            "Message held by moderation",
                            now,
                        )
                        .await?;
                    }
                    Inbound::Silent
                }
                Action::Block => {
                    store::block_contact(
                        &mut w,
                        &turn.tenant_id,
                        &turn.contact_id,
                        &format!("flag {flag_id}"),
                        "moderation",
                        now,
                    )
                    .await?;
                    Inbound::Silent
                }
            }
        };
        let decided = match decided {
            Inbound::Continue if asks_for_person => self.on_request(&mut w, turn, &active).await?,
            other => other,
        };
        w.commit().await?;
        Ok(decided)
    }

    /// The contact asked for a person: a ticket, the hand-off, and they are told.
    async fn on_request(
        &self,
        w: &mut WriteTx,
        turn: &PendingTurn,
        active: &Active,
    ) -> anyhow::Result<Inbound> {
        let now = now_ms();
        self.escalate(
            w,
            turn,
            None,
            "request",
            "normal",
            "The contact asked for a person",
            now,
        )
        .await?;
        counter!("switchboard_handoffs_total", "reason" => "request").increment(1);
        Ok(Inbound::Reply(active.compiled.handoff_text(now)))
    }

    /// After the bot answered, the hand-off policies on what kind of answer it was: the
    /// knowledge had nothing (`no_answer`), or too many answers in a row were not from it
    /// (`after_fallbacks`). `Some(text)`: the conversation went to a person with a ticket, and
    /// the contact is to be told `text` with the answer. Nothing is read or written for an
    /// ordinary answer in a conversation without fallbacks.
    ///
    /// `ungrounded_handoff`: the answer did not match its sources and the tenant's grounding
    /// policy hands such answers to a person (docs/KNOWLEDGE.md) — handed off whatever the
    /// hand-off policies say.
    pub async fn after_answer(
        &self,
        turn: &PendingTurn,
        kind: AnswerKind,
        ungrounded_handoff: bool,
    ) -> anyhow::Result<Option<String>> {
        let miss = kind != AnswerKind::Answered;
        let now = now_ms();
        if ungrounded_handoff && turn.conversation_status == "bot" {
            let active = self.active(&turn.tenant_id).await?;
            let mut w = self.store.begin_write().await?;
            store::set_fallbacks(&mut w, &turn.conversation_id, 0).await?;
            self.escalate(
                &mut w,
                turn,
                None,
                "ungrounded",
                "normal",
                "The bot's answer did not match its sources",
                now,
            )
            .await?;
            w.commit().await?;
            counter!("switchboard_handoffs_total", "reason" => "ungrounded").increment(1);
            return Ok(Some(active.compiled.handoff_text(now)));
        }
        if !miss && turn.fallbacks == 0 {
            return Ok(None);
        }
        if !miss {
            let mut w = self.store.begin_write().await?;
            store::set_fallbacks(&mut w, &turn.conversation_id, 0).await?;
            w.commit().await?;
            return Ok(None);
        }
        let active = self.active(&turn.tenant_id).await?;
        let handoff = &active.compiled.policy.handoff;
        if !handoff.no_answer && handoff.after_fallbacks == 0 {
            return Ok(None); // nothing counts them
        }
        let mut w = self.store.begin_write().await?;
        let count = turn.fallbacks + 1;
        let source = if kind == AnswerKind::NoAnswer && handoff.no_answer {
            Some("no_answer")
        } else if handoff.after_fallbacks > 0 && count >= i64::from(handoff.after_fallbacks) {
            Some("fallbacks")
        } else {
            None
        };
        let told = match source {
            Some(source) if turn.conversation_status == "bot" => {
                store::set_fallbacks(&mut w, &turn.conversation_id, 0).await?;
                let subject = if source == "no_answer" {
                    "The knowledge had no answer"
                } else {
                    "The bot could not answer from the knowledge several times"
                };
                self.escalate(&mut w, turn, None, source, "normal", subject, now)
                    .await?;
                counter!("switchboard_handoffs_total", "reason" => source).increment(1);
                Some(active.compiled.handoff_text(now))
            }
            _ => {
                store::set_fallbacks(&mut w, &turn.conversation_id, count).await?;
                None
            }
        };
        w.commit().await?;
        Ok(told)
    }

    /// A ticket (or a note on the open one) and the hand-off to a person.
    #[allow(clippy::too_many_arguments)]
    async fn escalate(
        &self,
        w: &mut WriteTx,
        turn: &PendingTurn,
        flag_id: Option<&str>,
        source: &str,
        priority: &str,
        subject: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        store::escalate(
            w,
            store::Escalation {
                tenant_id: &turn.tenant_id,
                conversation_id: &turn.conversation_id,
                contact_id: &turn.contact_id,
                flag_id,
                source,
                priority,
                subject,
                by: "moderation",
                targets: sla(priority),
            },
            now,
        )
        .await?;
        Ok(())
    }

    /// Checks a bot answer before it is stored and sent: a flag (with the answer, its citations
    /// and the rules hit) for anything found; `block` replaces it with the tenant's safe
    /// fallback; `hold` sends nothing until a moderator approves or edits it.
    pub async fn outbound(
        &self,
        turn: &PendingTurn,
        answer: &str,
        citations_json: &str,
        trace: Option<&crate::answer::Trace>,
    ) -> anyhow::Result<Outbound> {
        let active = self.active(&turn.tenant_id).await?;
        let (verdict, classification) = self.judge(&active, answer, false).await;
        if !verdict.flagged() {
            return Ok(Outbound::Send);
        }
        let shadow = verdict.shadow_only();
        let action = if shadow {
            verdict
                .hits
                .iter()
                .map(|h| h.action)
                .max()
                .unwrap_or(Action::Allow)
        } else {
            verdict.action
        };
        let citations: Value = serde_json::from_str(citations_json).unwrap_or(Value::Null);
        let evidence = json!({
            "question": turn.text,
            "answer": answer,
            "citations": citations,
            "retrieved": trace.map(|t| &t.retrieved),
            "prompt": trace.map(|t| &t.prompt),
            "hits": verdict.hits,
            "policy_version": verdict.policy_version,
            "classifier": classification,
        });
        let now = now_ms();
        let mut w = self.store.begin_write().await?;
        let (flag_id, new) = store::insert_flag(
            &mut w,
            store::NewFlag {
                tenant_id: &turn.tenant_id,
                conversation_id: &turn.conversation_id,
                contact_id: &turn.contact_id,
                message_id: &turn.message_id,
                direction: "outbound",
                action: action.as_str(),
                shadow,
                policy_version: verdict.policy_version,
                evidence: &evidence,
            },
            now,
        )
        .await?;
        counter!("switchboard_flags_total", "action" => action.as_str(), "shadow" => if shadow { "yes" } else { "no" })
            .increment(u64::from(new));
        let decided = match (shadow, action) {
            (true, _) | (false, Action::Allow | Action::Flag) => Outbound::Send,
            (false, Action::Block) => {
                Outbound::Replace(active.compiled.policy.safe_fallback.clone())
            }
            (false, Action::Hold) => {
                if new {
                    self.escalate(
                        &mut w,
                        turn,
                        Some(&flag_id),
                        "answer_held",
                        "normal",
                        "Bot answer held by moderation",
                        now,
                    )
                    .await?;
                }
                Outbound::Hold
            }
        };
        w.commit().await?;
        Ok(decided)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_acting_outbound_rules_screen_the_preview() {
        let stops = |policy: serde_json::Value| {
            let compiled = Compiled::parse(&policy).expect("valid");
            Active::new(1, compiled).stops_answers()
        };
        assert!(!stops(json!({})));
        let rule = |action: &str, applies_to: &str, shadow: bool| {
            json!({ "rules": [{ "id": "r", "words": ["x"], "action": action,
                                "applies_to": applies_to, "shadow": shadow }] })
        };
        assert!(stops(rule("block", "outbound", false)));
        assert!(stops(rule("hold", "both", false)));
        assert!(
            !stops(rule("flag", "outbound", false)),
            "a flag sends the answer anyway"
        );
        assert!(!stops(rule("block", "inbound", false)));
        assert!(
            !stops(rule("block", "outbound", true)),
            "shadow only records"
        );
        let mut shadowed = rule("block", "outbound", false);
        shadowed["shadow"] = json!(true);
        assert!(!stops(shadowed));
    }

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
