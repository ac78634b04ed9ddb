//! A program's definition: the schema (`docs/program.schema.json`, documented in
//! `docs/PROGRAMS.md`), parsing that names the path of a malformed part, and validation of the
//! whole graph before anything is saved.
//!
//! A program is a list of steps. Each step names the step after it with `next` (by default the
//! one below it; after the last, the program is complete). `branch` picks a `next` by a
//! condition, `ask` may also go to its `timeout.next`. Steps that take no time (`message`,
//! `branch`, `set`, `handoff`, `complete`) run one after another at once; `wait` and `ask` are
//! where an enrolment rests until a fire or an answer moves it on.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::time::{Duration, LocalTime, Offset, Schedule, Until};

/// Most steps in one program.
pub const MAX_STEPS: usize = 200;
/// Longest text of one message, question or prompt.
pub const MAX_TEXT: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What people type to join: `/join <slug>` in any channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// Whole messages that enrol the sender (`"sleep reset"`), besides `/join <slug>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// Named events (`POST /v1/events`) that enrol the contact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Contact fields the program reads or writes (asks and `set` steps declare theirs too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Channel kinds it may run on; unset: any. With `whatsapp` (or unset), every message that
    /// can be sent outside the 24-hour window needs an approved `template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// The first step (default: the first listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// What a fire that fell due while the gateway was down does (steps may override it).
    #[serde(default)]
    pub catch_up: CatchUp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactivity: Option<Inactivity>,
    /// Recurring check-ins in the contact's local time, sent while the enrolment is active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkins: Vec<Checkin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub badges: Vec<Badge>,
    pub steps: Vec<Step>,
}

/// A recurring check-in: `text` at each `schedule` time while the enrolment is active. The
/// contact's next message (unless an ask is waiting) is its answer: it counts toward the
/// streak, is saved to `field` (a button's id when it matches one), and is acknowledged with
/// `reply`. With neither `field`, `reply` nor buttons the answer is also answered as usual.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkin {
    pub id: String,
    pub schedule: Schedule,
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<ButtonDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUp>,
}

impl Checkin {
    /// Whether its answer is taken by the check-in (not also answered by the bot).
    pub fn takes_answer(&self) -> bool {
        self.field.is_some() || self.reply.is_some() || !self.buttons.is_empty()
    }
}

/// After downtime: send the late fire now, skip its messages, or wait for the next time the
/// step would allow (the same local time tomorrow for a time-of-day wait).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    #[default]
    SendLate,
    Skip,
    NextWindow,
}

/// Inactivity nudges: no message from the contact for `after` while enrolled → the first nudge;
/// another `after` without one → the next; when they run out the enrolment is marked at risk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inactivity {
    pub after: Duration,
    pub nudges: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    /// The share (0 to 0.5) of quiet episodes sent no nudge, as the control group of the nudge
    /// lift in the stats. Which episodes is decided by a hash of the enrolment and episode.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holdout: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// A milestone: a streak of `streak` days, or `steps` steps done.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Badge {
    pub id: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streak: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
}

/// A WhatsApp template approved by Meta, with its body parameters (template text allowed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ButtonDef {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaDef {
    /// `image`, `audio`, `video` or `document`.
    pub kind: String,
    pub url: String,
}

/// Text written by the tenant's model from `prompt`, the contact's history and knowledge;
/// `fallback` is sent when the model is down, slow, or writes nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    pub prompt: String,
    pub fallback: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    Message(MessageStep),
    Ask(AskStep),
    Wait(WaitStep),
    Branch(BranchStep),
    Set(SetStep),
    Handoff(HandoffStep),
    Complete(CompleteStep),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageStep {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Generate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<ButtonDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// What to do with a message that matches none of the expected answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Ask again (up to `reprompt.times`), then treat it as free text.
    #[default]
    Reprompt,
    /// Answer it as a question from knowledge; the ask keeps waiting.
    Answer,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberRange {
    pub min: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reprompt {
    pub times: u32,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeout {
    pub after: Duration,
    pub next: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskStep {
    pub id: String,
    pub text: String,
    /// The contact field the answer is saved to (also `answers.<step id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Answer buttons: a press (or typing the title) answers with the button's id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<ButtonDef>,
    /// Answer value → the words that mean it (`{"yes": ["yes", "y", "sure"]}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keywords: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<NumberRange>,
    /// Any text is an answer.
    #[serde(default)]
    pub free: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprompt: Option<Reprompt>,
    #[serde(default)]
    pub unmatched: Unmatched,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// An answer counts as the day's check-in (streaks).
    #[serde(default)]
    pub checkin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One of: `for` a duration; `until` a local time (`"08:00"`, `"mon 09:00"`); or a contact
/// date `field` plus `offset`, delivered `at` a local time. With `event`, a named event
/// (`POST /v1/events`) for the contact ends the wait too — alone, it waits for the event only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitStep {
    pub id: String,
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Until>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<Offset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<LocalTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// An ask step's id: its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// The contact has this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(rename = "in", default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    #[serde(rename = "if")]
    pub when: Condition,
    pub next: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchStep {
    pub id: String,
    pub cases: Vec<Case>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStep {
    pub id: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffStep {
    pub id: String,
    /// For the person taking over (stored in the audit log and the conversation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Said to the contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteStep {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Step {
    pub fn id(&self) -> &str {
        match self {
            Step::Message(s) => &s.id,
            Step::Ask(s) => &s.id,
            Step::Wait(s) => &s.id,
            Step::Branch(s) => &s.id,
            Step::Set(s) => &s.id,
            Step::Handoff(s) => &s.id,
            Step::Complete(s) => &s.id,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Step::Message(_) => "message",
            Step::Ask(_) => "ask",
            Step::Wait(_) => "wait",
            Step::Branch(_) => "branch",
            Step::Set(_) => "set",
            Step::Handoff(_) => "handoff",
            Step::Complete(_) => "complete",
        }
    }

    /// The explicit `next`, for the steps that have one.
    fn explicit_next(&self) -> Option<&str> {
        match self {
            Step::Message(s) => s.next.as_deref(),
            Step::Ask(s) => s.next.as_deref(),
            Step::Wait(s) => s.next.as_deref(),
            Step::Set(s) => s.next.as_deref(),
            Step::Handoff(s) => s.next.as_deref(),
            Step::Branch(_) | Step::Complete(_) => None,
        }
    }

    /// Whether an enrolment rests here (a fire or an answer moves it on).
    pub fn rests(&self) -> bool {
        matches!(self, Step::Wait(_) | Step::Ask(_))
    }
}

/// One problem with a definition: where (`steps[3].next`) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A definition that parsed and validated, with its step index.
#[derive(Debug, Clone)]
pub struct Program {
    pub definition: Definition,
    index: HashMap<String, usize>,
}

impl Program {
    /// Parses and validates JSON; every problem found, each with its path.
    pub fn parse(json: &Value) -> Result<Program, Vec<Problem>> {
        let definition: Definition = serde_path_to_error::deserialize(json).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            vec![
                step_problem(json, &path)
                    .unwrap_or_else(|| Problem::new(path, e.into_inner().to_string())),
            ]
        })?;
        Program::from_definition(definition)
    }

    /// A definition stored earlier (validated when it was saved).
    pub fn from_stored(text: &str) -> anyhow::Result<Program> {
        let json: Value = serde_json::from_str(text)?;
        Program::parse(&json).map_err(|problems| {
            anyhow::anyhow!(
                "stored program definition is invalid: {}",
                problems
                    .iter()
                    .map(|p| format!("{}: {}", p.path, p.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })
    }

    pub fn from_definition(definition: Definition) -> Result<Program, Vec<Problem>> {
        let problems = validate(&definition);
        if !problems.is_empty() {
            return Err(problems);
        }
        let index = definition
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id().to_owned(), i))
            .collect();
        Ok(Program { definition, index })
    }

    pub fn checkin(&self, id: &str) -> Option<&Checkin> {
        self.definition.checkins.iter().find(|c| c.id == id)
    }

    pub fn step(&self, id: &str) -> Option<&Step> {
        self.index.get(id).map(|&i| &self.definition.steps[i])
    }

    pub fn start(&self) -> &str {
        self.definition
            .start
            .as_deref()
            .unwrap_or_else(|| self.definition.steps[0].id())
    }

    /// The step after `id` when it does not choose (its `next`, or the one listed below it);
    /// `None` after the last: the program is complete.
    pub fn next_of(&self, id: &str) -> Option<&str> {
        let &i = self.index.get(id)?;
        let step = &self.definition.steps[i];
        if let Some(next) = step.explicit_next() {
            return Some(next);
        }
        match step {
            Step::Branch(_) | Step::Complete(_) => None,
            _ => self.definition.steps.get(i + 1).map(Step::id),
        }
    }

    /// The slug people join with: the definition's, or the name in lower case with dashes.
    pub fn slug(&self) -> String {
        self.definition
            .slug
            .clone()
            .unwrap_or_else(|| slugify(&self.definition.name))
    }

    /// Steps that count towards progress (messages and asks: what the contact sees).
    pub fn total_steps(&self) -> usize {
        self.definition
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Message(_) | Step::Ask(_)))
            .count()
    }

    /// Whether the program may run on channels of this kind.
    pub fn runs_on(&self, kind: &str) -> bool {
        self.definition
            .channels
            .as_ref()
            .is_none_or(|c| c.iter().any(|k| k == kind))
    }
}

/// A step's own error with its full path: serde reports errors inside an internally tagged
/// enum at the step (`steps[2]`), so the step is read again as its type's struct.
fn step_problem(json: &Value, path: &str) -> Option<Problem> {
    let index: usize = path
        .strip_prefix("steps[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    let mut step = json.get("steps")?.get(index)?.clone();
    let kind = step.as_object_mut()?.remove("type")?;
    fn inner<T: serde::de::DeserializeOwned>(step: &Value) -> Option<(String, String)> {
        serde_path_to_error::deserialize::<_, T>(step)
            .err()
            .map(|e| (e.path().to_string(), e.into_inner().to_string()))
    }
    let (inner_path, message) = match kind.as_str()? {
        "message" => inner::<MessageStep>(&step),
        "ask" => inner::<AskStep>(&step),
        "wait" => inner::<WaitStep>(&step),
        "branch" => inner::<BranchStep>(&step),
        "set" => inner::<SetStep>(&step),
        "handoff" => inner::<HandoffStep>(&step),
        "complete" => inner::<CompleteStep>(&step),
        _ => None,
    }?;
    let full = if inner_path == "." {
        path.to_owned()
    } else {
        format!("{path}.{inner_path}")
    };
    Some(Problem::new(full, message))
}

pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').to_owned()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Every problem with a definition (empty: it is valid).
pub fn validate(d: &Definition) -> Vec<Problem> {
    let mut p = Vec::new();
    if d.name.trim().is_empty() {
        p.push(Problem::new("name", "a program needs a name"));
    }
    if let Some(slug) = &d.slug
        && !valid_id(slug)
    {
        p.push(Problem::new(
            "slug",
            "use 1-64 characters of a-z, 0-9, '-' and '_'",
        ));
    }
    for (i, k) in d.keywords.iter().enumerate() {
        let k = k.trim().to_lowercase();
        if k.is_empty() || crate::commands::parse("text", &k).is_some() {
            p.push(Problem::new(
                format!("keywords[{i}]"),
                "a keyword must be non-empty and not a command (stop, start, help, …)",
            ));
        }
    }
    if let Some(channels) = &d.channels {
        for (i, c) in channels.iter().enumerate() {
            if switchboard_channel::ChannelKind::parse(c).is_none() {
                p.push(Problem::new(
                    format!("channels[{i}]"),
                    format!("unknown channel kind {c:?}"),
                ));
            }
        }
    }
    if d.steps.is_empty() {
        p.push(Problem::new("steps", "a program needs at least one step"));
        return p;
    }
    if d.steps.len() > MAX_STEPS {
        p.push(Problem::new(
            "steps",
            format!("at most {MAX_STEPS} steps ({} given)", d.steps.len()),
        ));
        return p;
    }
    // Ids: valid and unique.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, step) in d.steps.iter().enumerate() {
        let id = step.id();
        if !valid_id(id) {
            p.push(Problem::new(
                format!("steps[{i}].id"),
                "use 1-64 characters of a-z, 0-9, '-' and '_'",
            ));
        } else if index.insert(id, i).is_some() {
            p.push(Problem::new(
                format!("steps[{i}].id"),
                format!("step id {id:?} is used twice"),
            ));
        }
    }
    let target = |path: String, id: &str, p: &mut Vec<Problem>| {
        if !index.contains_key(id) {
            p.push(Problem::new(path, format!("no step has the id {id:?}")));
        }
    };
    if let Some(start) = &d.start {
        target("start".into(), start, &mut p);
    }
    // Declared fields: the program's, asks' and set steps'.
    let mut fields: HashSet<&str> = d.fields.iter().map(String::as_str).collect();
    let asks: HashSet<&str> = d
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Ask(a) => Some(a.id.as_str()),
            _ => None,
        })
        .collect();
    for step in &d.steps {
        match step {
            Step::Ask(a) => fields.extend(a.field.as_deref()),
            Step::Set(s) => fields.extend(s.fields.keys().map(String::as_str)),
            _ => {}
        }
    }
    fields.extend(d.checkins.iter().filter_map(|c| c.field.as_deref()));
    let mut texts: Vec<(String, &str)> = Vec::new();
    // Check-ins: ids of their own, something to say, buttons and templates like a message's.
    if d.checkins.len() > 20 {
        p.push(Problem::new("checkins", "at most 20 check-ins"));
    }
    let mut checkin_ids = HashSet::new();
    for (i, c) in d.checkins.iter().enumerate() {
        let at = |f: &str| format!("checkins[{i}].{f}");
        if !valid_id(&c.id) {
            p.push(Problem::new(
                at("id"),
                "use 1-64 characters of a-z, 0-9, '-' and '_'",
            ));
        } else if !checkin_ids.insert(c.id.as_str()) {
            p.push(Problem::new(
                at("id"),
                format!("check-in id {:?} is used twice", c.id),
            ));
        }
        if c.text.trim().is_empty() {
            p.push(Problem::new(at("text"), "a check-in needs a text"));
        }
        texts.push((at("text"), &c.text));
        if let Some(r) = &c.reply {
            texts.push((at("reply"), r));
        }
        check_buttons(&c.buttons, &at("buttons"), &mut p);
        if let Some(t) = &c.template {
            check_template(t, &at("template"), &mut texts, &mut p);
        }
    }
    for (i, step) in d.steps.iter().enumerate() {
        let at = |f: &str| format!("steps[{i}].{f}");
        if let Some(next) = step.explicit_next() {
            target(at("next"), next, &mut p);
        }
        match step {
            Step::Message(m) => {
                match (&m.text, &m.generate) {
                    (None, None) => p.push(Problem::new(
                        at("text"),
                        "a message needs `text` or `generate`",
                    )),
                    (Some(_), Some(_)) => p.push(Problem::new(
                        at("generate"),
                        "give `text` or `generate`, not both",
                    )),
                    _ => {}
                }
                if let Some(t) = &m.text {
                    texts.push((at("text"), t));
                }
                if let Some(g) = &m.generate {
                    texts.push((at("generate.prompt"), &g.prompt));
                    texts.push((at("generate.fallback"), &g.fallback));
                    if g.fallback.trim().is_empty() {
                        p.push(Problem::new(
                            at("generate.fallback"),
                            "a generated message needs a fallback text for when the model is down",
                        ));
                    }
                }
                check_buttons(&m.buttons, &at("buttons"), &mut p);
                if let Some(media) = &m.media
                    && !matches!(
                        media.kind.as_str(),
                        "image" | "audio" | "video" | "document"
                    )
                {
                    p.push(Problem::new(
                        at("media.kind"),
                        "one of image, audio, video, document",
                    ));
                }
                if let Some(t) = &m.template {
                    check_template(t, &at("template"), &mut texts, &mut p);
                }
            }
            Step::Ask(a) => {
                texts.push((at("text"), &a.text));
                check_buttons(&a.buttons, &at("buttons"), &mut p);
                if a.buttons.is_empty() && a.keywords.is_empty() && a.number.is_none() && !a.free {
                    p.push(Problem::new(
                        at("buttons"),
                        "an ask needs expected answers: buttons, keywords, a number range, or free: true",
                    ));
                }
                if let Some(n) = &a.number
                    && !(n.min.is_finite() && n.max.is_finite() && n.min <= n.max)
                {
                    p.push(Problem::new(at("number"), "min must not be above max"));
                }
                for (value, words) in &a.keywords {
                    if words.iter().all(|w| w.trim().is_empty()) {
                        p.push(Problem::new(
                            at(&format!("keywords.{value}")),
                            "list at least one word for this answer",
                        ));
                    }
                }
                if let Some(r) = &a.reprompt {
                    texts.push((at("reprompt.text"), &r.text));
                    if r.times > 5 {
                        p.push(Problem::new(at("reprompt.times"), "at most 5"));
                    }
                }
                if let Some(t) = &a.timeout {
                    target(at("timeout.next"), &t.next, &mut p);
                }
                if let Some(t) = &a.template {
                    check_template(t, &at("template"), &mut texts, &mut p);
                }
            }
            Step::Wait(w) => {
                let kinds = usize::from(w.duration.is_some())
                    + usize::from(w.until.is_some())
                    + usize::from(w.field.is_some());
                if kinds > 1 || (kinds == 0 && w.event.is_none()) {
                    p.push(Problem::new(
                        at("for"),
                        "a wait needs one of `for` (a duration), `until` (a local time) or `field` (a contact date), or an `event` (or an event and one of them)",
                    ));
                }
                if let Some(event) = &w.event
                    && (event.trim().is_empty() || event.len() > 128)
                {
                    p.push(Problem::new(at("event"), "an event name of 1-128 bytes"));
                }
                if let Some(field) = &w.field {
                    if !fields.contains(field.as_str()) {
                        p.push(Problem::new(
                            at("field"),
                            format!("field {field:?} is not declared in `fields`"),
                        ));
                    }
                    if w.at.is_none() {
                        p.push(Problem::new(
                            at("at"),
                            "a wait on a date field needs `at` (the local delivery time)",
                        ));
                    }
                } else if w.offset.is_some() || w.at.is_some() {
                    p.push(Problem::new(
                        at("offset"),
                        "`offset` and `at` go with `field`",
                    ));
                }
            }
            Step::Branch(b) => {
                if b.cases.is_empty() {
                    p.push(Problem::new(
                        at("cases"),
                        "a branch needs at least one case",
                    ));
                }
                for (j, case) in b.cases.iter().enumerate() {
                    let path = at(&format!("cases[{j}]"));
                    target(format!("{path}.next"), &case.next, &mut p);
                    let c = &case.when;
                    let subjects = usize::from(c.field.is_some())
                        + usize::from(c.answer.is_some())
                        + usize::from(c.tag.is_some());
                    if subjects != 1 {
                        p.push(Problem::new(
                            format!("{path}.if"),
                            "a condition tests exactly one of `field`, `answer` or `tag`",
                        ));
                    }
                    if let Some(f) = &c.field
                        && !fields.contains(f.as_str())
                    {
                        p.push(Problem::new(
                            format!("{path}.if.field"),
                            format!("field {f:?} is not declared in `fields`"),
                        ));
                    }
                    if let Some(a) = &c.answer
                        && !asks.contains(a.as_str())
                    {
                        p.push(Problem::new(
                            format!("{path}.if.answer"),
                            format!("no ask step has the id {a:?}"),
                        ));
                    }
                    if c.tag.is_none()
                        && c.equals.is_none()
                        && c.one_of.is_none()
                        && c.gte.is_none()
                        && c.lte.is_none()
                    {
                        p.push(Problem::new(
                            format!("{path}.if"),
                            "say what to compare with: equals, in, gte or lte",
                        ));
                    }
                }
                match &b.default {
                    Some(d) => target(at("default"), d, &mut p),
                    None => p.push(Problem::new(
                        at("default"),
                        "a branch needs a default (where to go when no case matches)",
                    )),
                }
            }
            Step::Set(s) => {
                if s.fields.is_empty() && s.add_tags.is_empty() && s.remove_tags.is_empty() {
                    p.push(Problem::new(at("fields"), "a set step sets nothing"));
                }
            }
            Step::Handoff(h) => {
                if let Some(t) = &h.text {
                    texts.push((at("text"), t));
                }
                if let Some(n) = &h.note {
                    texts.push((at("note"), n));
                }
            }
            Step::Complete(c) => {
                if let Some(t) = &c.text {
                    texts.push((at("text"), t));
                }
            }
        }
    }
    if let Some(inactivity) = &d.inactivity {
        if inactivity.nudges.is_empty() {
            p.push(Problem::new(
                "inactivity.nudges",
                "list at least one nudge text",
            ));
        }
        for (i, n) in inactivity.nudges.iter().enumerate() {
            texts.push((format!("inactivity.nudges[{i}]"), n));
        }
        if let Some(t) = &inactivity.template {
            check_template(t, "inactivity.template", &mut texts, &mut p);
        }
        if !(0.0..=0.5).contains(&inactivity.holdout) {
            p.push(Problem::new(
                "inactivity.holdout",
                "a share from 0 to 0.5 of quiet episodes held back from nudges",
            ));
        }
    }
    for (i, b) in d.badges.iter().enumerate() {
        if b.streak.is_none() == b.steps.is_none() {
            p.push(Problem::new(
                format!("badges[{i}]"),
                "a badge is earned by `streak` (days) or by `steps` (done), one of them",
            ));
        }
    }
    // Template text: it parses, and names only what a program has.
    for (path, text) in &texts {
        if text.len() > MAX_TEXT {
            p.push(Problem::new(
                path.clone(),
                format!("at most {MAX_TEXT} bytes"),
            ));
            continue;
        }
        match crate::answer::prompts::template_variables(text) {
            Err(e) => p.push(Problem::new(path.clone(), e.to_string())),
            Ok(vars) => {
                let mut vars: Vec<String> = vars.into_iter().collect();
                vars.sort();
                for var in vars {
                    if let Some(why) = unknown_variable(&var, &fields, &asks) {
                        p.push(Problem::new(path.clone(), why));
                    }
                }
            }
        }
    }
    if p.is_empty() {
        graph_problems(d, &index, &mut p);
    }
    p
}

fn check_buttons(buttons: &[ButtonDef], path: &str, p: &mut Vec<Problem>) {
    if buttons.len() > 10 {
        p.push(Problem::new(path, "at most 10 buttons"));
    }
    let mut seen = HashSet::new();
    for (i, b) in buttons.iter().enumerate() {
        if b.id.trim().is_empty() || b.title.trim().is_empty() {
            p.push(Problem::new(
                format!("{path}[{i}]"),
                "a button needs an id and a title",
            ));
        } else if !seen.insert(b.id.as_str()) {
            p.push(Problem::new(
                format!("{path}[{i}].id"),
                format!("button id {:?} is used twice", b.id),
            ));
        }
    }
}

fn check_template<'a>(
    t: &'a TemplateRef,
    path: &str,
    texts: &mut Vec<(String, &'a str)>,
    p: &mut Vec<Problem>,
) {
    if t.name.trim().is_empty() {
        p.push(Problem::new(format!("{path}.name"), "the template's name"));
    }
    for (i, param) in t.parameters.iter().enumerate() {
        texts.push((format!("{path}.parameters[{i}]"), param));
    }
}

/// Why a template variable is not one a program has (`None`: it is).
fn unknown_variable(var: &str, fields: &HashSet<&str>, asks: &HashSet<&str>) -> Option<String> {
    let mut parts = var.split('.');
    let root = parts.next().unwrap_or("");
    let second = parts.next();
    let ok = match root {
        // The template language's own functions.
        "range" | "dict" | "namespace" | "debug" | "loop" => true,
        "contact" => match second {
            None | Some("name" | "timezone" | "fields") => true,
            Some(_) => false,
        },
        "fields" => second.is_none_or(|f| fields.contains(f)),
        "answers" => second.is_none_or(|a| asks.contains(a)),
        "program" => matches!(second, None | Some("name")),
        "progress" => matches!(second, None | Some("done" | "total")),
        "streak" => second.is_none(),
        _ => false,
    };
    (!ok).then(|| {
        format!(
            "unknown variable `{var}` (a program has contact.name, contact.timezone, fields.<declared field>, answers.<ask id>, program.name, progress.done, progress.total, streak)"
        )
    })
}

/// The graph as a whole: every step reachable, no loop that never rests, and on WhatsApp a
/// template on every message that can go out when the contact has not written for a day.
fn graph_problems(d: &Definition, index: &HashMap<&str, usize>, p: &mut Vec<Problem>) {
    let n = d.steps.len();
    let next_default = |i: usize| -> Option<usize> {
        match &d.steps[i] {
            Step::Branch(_) | Step::Complete(_) => None,
            s => match s.explicit_next() {
                Some(next) => index.get(next).copied(),
                None => (i + 1 < n).then_some(i + 1),
            },
        }
    };
    // Edges: (to, whether the edge runs right after the contact wrote: an ask's answer).
    let edges = |i: usize| -> Vec<(usize, bool)> {
        let mut out = Vec::new();
        match &d.steps[i] {
            Step::Branch(b) => {
                out.extend(
                    b.cases
                        .iter()
                        .filter_map(|c| index.get(c.next.as_str()).map(|&j| (j, false))),
                );
                out.extend(
                    b.default
                        .as_deref()
                        .and_then(|x| index.get(x))
                        .map(|&j| (j, false)),
                );
            }
            Step::Ask(a) => {
                out.extend(next_default(i).map(|j| (j, true)));
                out.extend(
                    a.timeout
                        .as_ref()
                        .and_then(|t| index.get(t.next.as_str()))
                        .map(|&j| (j, false)),
                );
            }
            _ => out.extend(next_default(i).map(|j| (j, false))),
        }
        out
    };
    let start = d
        .start
        .as_deref()
        .and_then(|s| index.get(s).copied())
        .unwrap_or(0);
    // Reachability.
    let mut seen = vec![false; n];
    let mut queue = VecDeque::from([start]);
    seen[start] = true;
    while let Some(i) = queue.pop_front() {
        for (j, _) in edges(i) {
            if !seen[j] {
                seen[j] = true;
                queue.push_back(j);
            }
        }
    }
    for (i, reached) in seen.iter().enumerate() {
        if !reached {
            p.push(Problem::new(
                format!("steps[{i}]"),
                format!(
                    "step {:?} can never be reached from the start",
                    d.steps[i].id()
                ),
            ));
        }
    }
    // A loop through steps that take no time would run for ever at once.
    let mut state = vec![0u8; n]; // 0 new, 1 on the path, 2 done
    for root in 0..n {
        if state[root] != 0 || d.steps[root].rests() {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        state[root] = 1;
        while let Some(&mut (i, ref mut k)) = stack.last_mut() {
            let out: Vec<usize> = edges(i)
                .into_iter()
                .map(|(j, _)| j)
                .filter(|&j| !d.steps[j].rests())
                .collect();
            if *k < out.len() {
                let j = out[*k];
                *k += 1;
                if state[j] == 1 {
                    p.push(Problem::new(
                        format!("steps[{j}]"),
                        format!(
                            "step {:?} is on a loop with no wait or ask: it would repeat at once for ever",
                            d.steps[j].id()
                        ),
                    ));
                    return;
                }
                if state[j] == 0 {
                    state[j] = 1;
                    stack.push((j, 0));
                }
            } else {
                state[i] = 2;
                stack.pop();
            }
        }
    }
    // WhatsApp's 24-hour window: a message is sure to be inside it only right after the contact
    // answered an ask. Steps reached at once from the start (an enrolment by API or event), after a
    // wait, or after an ask's timeout may be outside it and need a template.
    let whatsapp = d
        .channels
        .as_ref()
        .is_none_or(|c| c.iter().any(|k| k == "whatsapp"));
    if !whatsapp {
        return;
    }
    let mut outside = vec![false; n];
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut origins = vec![start];
    for i in 0..n {
        match &d.steps[i] {
            Step::Wait(_) => origins.extend(next_default(i)),
            Step::Ask(a) => origins.extend(
                a.timeout
                    .as_ref()
                    .and_then(|t| index.get(t.next.as_str()).copied()),
            ),
            _ => {}
        }
    }
    for o in origins {
        if !outside[o] {
            outside[o] = true;
            queue.push_back(o);
        }
    }
    while let Some(i) = queue.pop_front() {
        if d.steps[i].rests() && !matches!(d.steps[i], Step::Ask(_)) {
            continue;
        }
        if matches!(d.steps[i], Step::Ask(_)) {
            continue; // the question itself is checked below; after it the contact has written
        }
        for (j, after_answer) in edges(i) {
            if !after_answer && !outside[j] {
                outside[j] = true;
                queue.push_back(j);
            }
        }
    }
    for (i, step) in d.steps.iter().enumerate() {
        if !outside[i] {
            continue;
        }
        let missing = match step {
            Step::Message(m) => m.template.is_none(),
            Step::Ask(a) => a.template.is_none(),
            _ => false,
        };
        if missing {
            p.push(Problem::new(
                format!("steps[{i}].template"),
                format!(
                    "step {:?} can be sent more than 24 hours after the contact last wrote; on WhatsApp that needs an approved template (or leave whatsapp out of `channels`)",
                    step.id()
                ),
            ));
        }
    }
    for (i, c) in d.checkins.iter().enumerate() {
        if c.template.is_none() {
            p.push(Problem::new(
                format!("checkins[{i}].template"),
                format!(
                    "check-in {:?} goes out on a schedule, whether or not the contact wrote; on WhatsApp it needs an approved template (or leave whatsapp out of `channels`)",
                    c.id
                ),
            ));
        }
    }
    if let Some(inactivity) = &d.inactivity
        && inactivity.template.is_none()
    {
        p.push(Problem::new(
            "inactivity.template",
            "nudges go to people who have not written; on WhatsApp they need an approved template (or leave whatsapp out of `channels`)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(def: Value) -> Vec<Problem> {
        match Program::parse(&def) {
            Ok(_) => Vec::new(),
            Err(p) => p,
        }
    }

    fn paths(def: Value) -> Vec<String> {
        problems(def).into_iter().map(|p| p.path).collect()
    }

    fn msg(id: &str) -> Value {
        json!({ "id": id, "type": "message", "text": "hi" })
    }

    #[test]
    fn the_demo_program_is_valid() {
        let def: Value = serde_json::from_str(crate::programs::DEMO_PROGRAM).expect("json");
        let program = Program::parse(&def).expect("valid");
        assert_eq!(program.slug(), "sleep");
        assert_eq!(program.start(), "welcome");
        assert_eq!(program.next_of("welcome"), Some("wait-1"));
        assert_eq!(program.next_of("done"), None);
    }

    /// Each definition is wrong in one way; each is refused with the path of that error.
    #[test]
    fn invalid_definitions_name_the_path_of_each_error() {
        let api = json!(["api"]);
        let cases: Vec<(Value, &str)> = vec![
            (json!({ "name": "x", "steps": [] }), "steps"),
            (
                json!({ "name": "", "channels": api, "steps": [msg("a")] }),
                "name",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [msg("a"), msg("a")] }),
                "steps[1].id",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "a", "type": "message", "text": "hi", "next": "nope" } ] }),
                "steps[0].next",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "b", "type": "branch", "cases": [ { "if": { "tag": "vip" }, "next": "c" } ] }, msg("c") ] }),
                "steps[0].default",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "a", "type": "message", "text": "hi", "next": "c" }, msg("b"), msg("c") ] }),
                "steps[1]",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "a", "type": "message", "text": "hi", "next": "b" }, { "id": "b", "type": "set", "add_tags": ["t"], "next": "a" } ] }),
                "steps[0]",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "a", "type": "message", "text": "hi {{ fields.unknown }}" } ] }),
                "steps[0].text",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "a", "type": "message", "text": "hi {{ oops" } ] }),
                "steps[0].text",
            ),
            (
                json!({ "name": "x", "steps": [ msg("a"), { "id": "w", "type": "wait", "for": "1d" }, msg("b") ] }),
                "steps[0].template",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "w", "type": "wait", "for": "1x" } ] }),
                "steps[0].for",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "w", "type": "wait", "until": "25:00" } ] }),
                "steps[0].until",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "q", "type": "ask", "text": "?" } ] }),
                "steps[0].buttons",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "q", "type": "ask", "text": "?", "number": { "min": 5, "max": 1 } } ] }),
                "steps[0].number",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "q", "type": "ask", "text": "?", "free": true, "timeout": { "after": "1h", "next": "gone" } } ] }),
                "steps[0].timeout.next",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "a", "type": "shout" } ] }),
                "steps[0].type",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "Bad Id", "type": "message", "text": "hi" } ] }),
                "steps[0].id",
            ),
            (
                json!({ "name": "x", "channels": ["fax"], "steps": [msg("a")] }),
                "channels[0]",
            ),
            (
                json!({ "name": "x", "channels": api, "keywords": ["stop"], "steps": [msg("a")] }),
                "keywords[0]",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "w", "type": "wait", "field": "birthday", "at": "09:00" } ] }),
                "steps[0].field",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [ { "id": "a", "type": "message", "generate": { "prompt": "p", "fallback": "" } } ] }),
                "steps[0].generate.fallback",
            ),
            (
                json!({ "name": "x", "channels": api, "badges": [ { "id": "b", "title": "B" } ], "steps": [msg("a")] }),
                "badges[0]",
            ),
            (
                json!({ "name": "x", "channels": api, "checkins": [ { "id": "c", "schedule": "funday 08:00", "text": "ok?" } ], "steps": [msg("a")] }),
                "checkins[0].schedule",
            ),
            (
                json!({ "name": "x", "channels": api, "checkins": [ { "id": "c", "schedule": "daily 08:00", "text": "{{ fields.nope }}" } ], "steps": [msg("a")] }),
                "checkins[0].text",
            ),
            (
                json!({ "name": "x", "checkins": [ { "id": "c", "schedule": "FREQ=DAILY;BYHOUR=8", "text": "ok?", "template": { "name": "t" } }, { "id": "d", "schedule": "08:00", "text": "ok?" } ], "steps": [msg("a")] }),
                "checkins[1].template",
            ),
            (
                json!({ "name": "x", "channels": api, "steps": [msg("a")], "surprise": 1 }),
                "surprise",
            ),
        ];
        assert!(cases.len() >= 12);
        for (def, want) in cases {
            let got = paths(def.clone());
            assert!(
                got.iter().any(|p| p == want),
                "expected an error at {want:?} for {def}, got {:?}",
                problems(def.clone())
            );
        }
    }

    #[test]
    fn a_loop_that_waits_is_fine_and_whatsapp_steps_after_an_answer_need_no_template() {
        let def = json!({ "name": "Daily", "steps": [
            { "id": "q", "type": "ask", "text": "Mood?", "free": true,
              "template": { "name": "daily_mood" } },
            { "id": "thanks", "type": "message", "text": "Thanks!" },
            { "id": "w", "type": "wait", "until": "08:00", "next": "q" }
        ] });
        let program = Program::parse(&def).expect("valid");
        assert_eq!(program.next_of("w"), Some("q"));
        assert_eq!(program.total_steps(), 2);
    }

    #[test]
    fn hostile_definitions_are_refused_cheaply() {
        // Too many steps, a huge text, deep nesting in a field value.
        let steps: Vec<Value> = (0..MAX_STEPS + 1).map(|i| msg(&format!("s{i}"))).collect();
        assert_eq!(
            paths(json!({ "name": "x", "channels": ["api"], "steps": steps })),
            ["steps"]
        );
        let long = "a".repeat(MAX_TEXT + 1);
        assert_eq!(
            paths(
                json!({ "name": "x", "channels": ["api"], "steps": [ { "id": "a", "type": "message", "text": long } ] })
            ),
            ["steps[0].text"]
        );
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!([deep]);
        }
        let def = json!({ "name": "x", "channels": ["api"], "steps": [ { "id": "s", "type": "set", "fields": { "f": deep } } ] });
        assert!(Program::parse(&def).is_ok());
        // A template that loops for ever is cut off by fuel when rendered, not at save time.
        let def = json!({ "name": "x", "channels": ["api"], "steps": [ { "id": "a", "type": "message",
            "text": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}" } ] });
        let program = Program::parse(&def).expect("valid syntax");
        let state = crate::programs::flow::State {
            step: "a".into(),
            waiting: crate::programs::flow::Waiting::Wait,
            steps_done: 0,
            reprompts: 0,
            answers: Default::default(),
            fields: Default::default(),
            tags: Vec::new(),
            fields_read: Default::default(),
            tags_read: Vec::new(),
            contact_name: String::new(),
            timezone: "UTC".into(),
            tz: jiff::tz::TimeZone::UTC,
            streak: 0,
        };
        let started = std::time::Instant::now();
        let Step::Message(m) = &program.definition.steps[0] else {
            panic!("a message step");
        };
        let text = crate::programs::flow::render(&program, &state, m.text.as_deref().unwrap_or(""));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(
            text.is_empty(),
            "a text that cannot be rendered is not sent"
        );
    }
}
