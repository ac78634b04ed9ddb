//! Running a program's steps: pure functions from an enrolment's state to what it says, where it
//! rests next and what it schedules. Nothing here touches the database; the store applies an
//! [`Outcome`] in the same transaction that claimed the fire or completed the turn, so a crash
//! anywhere leaves either all of it or none.

use std::collections::HashMap;

use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::{Map, Value, json};
use switchboard_channel::{Button, Content, Media, Template};

use super::definition::{AskStep, Checkin, Condition, Program, Step, TemplateRef};
use super::time;

/// Most steps one run may take (validation rules out loops that never rest; this is a backstop).
const MAX_STEPS_PER_RUN: usize = 500;

/// Where an enrolment rests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// At a wait step; a `step` fire moves it on.
    Wait,
    /// At an ask, for an answer (or its `timeout` fire).
    Ask,
    /// Completed.
    Done,
}

impl Waiting {
    pub fn as_str(self) -> &'static str {
        match self {
            Waiting::Wait => "wait",
            Waiting::Ask => "ask",
            Waiting::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Waiting {
        match s {
            "ask" => Waiting::Ask,
            "done" => Waiting::Done,
            _ => Waiting::Wait,
        }
    }
}

/// What a run needs to know about the enrolment and its contact.
#[derive(Debug, Clone)]
pub struct State {
    pub step: String,
    pub waiting: Waiting,
    pub steps_done: i64,
    pub reprompts: i64,
    pub answers: Map<String, Value>,
    pub fields: Map<String, Value>,
    pub tags: Vec<String>,
    /// The contact's fields and tags as read (they are written back only when a run changed them).
    pub fields_read: Map<String, Value>,
    pub tags_read: Vec<String>,
    pub contact_name: String,
    pub timezone: String,
    pub tz: TimeZone,
    pub streak: i64,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub step: String,
    pub text: String,
    pub content: Option<Content>,
    /// The approved template to send instead when WhatsApp's 24-hour window is closed.
    pub template: Option<Template>,
}

/// A fire to add.
#[derive(Debug, Clone, PartialEq)]
pub struct FireSpec {
    /// `step` (a wait ends), `timeout` (an ask goes unanswered), `nudge`, `checkin`.
    pub kind: &'static str,
    pub step: String,
    pub due_at: i64,
    /// The epoch to key it by (default: the enrolment's after this run); nudges use their
    /// episode's.
    pub epoch: Option<i64>,
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub messages: Vec<Outgoing>,
    /// Where it rests now (`None`: unchanged).
    pub rest: Option<(String, Waiting)>,
    pub schedule: Vec<FireSpec>,
    pub completed: bool,
    /// A hand-off to a person, with the note for them.
    pub handoff: Option<String>,
    /// Steps reached, in order (for the funnel).
    pub reached: Vec<String>,
    /// A `generate` step needs the model's text first (the run is to be repeated with it).
    pub needs_generation: Option<GenerateRequest>,
    /// Something the run could not do as written (a wait on a missing date field), for the log.
    pub notes: Vec<String>,
}

/// What to ask the model for a `generate` step.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub step: String,
    pub prompt: String,
    pub fallback: String,
}

/// Texts written by the model for `generate` steps, by step id (the fallback when it failed).
pub type Generated = HashMap<String, String>;

/// The template context: what `{{ … }}` may name (checked when the program is saved).
#[derive(Serialize)]
struct Vars<'a> {
    contact: ContactVars<'a>,
    fields: &'a Map<String, Value>,
    answers: &'a Map<String, Value>,
    program: ProgramVars<'a>,
    progress: ProgressVars,
    streak: i64,
}

#[derive(Serialize)]
struct ContactVars<'a> {
    name: &'a str,
    timezone: &'a str,
    fields: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct ProgramVars<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct ProgressVars {
    done: i64,
    total: usize,
}

/// Renders a program text. A variable the contact has no value for renders empty; a text that
/// still fails (it ran out of fuel) renders as nothing, and is not sent.
pub fn render(program: &Program, state: &State, text: &str) -> String {
    let vars = Vars {
        contact: ContactVars {
            name: &state.contact_name,
            timezone: &state.timezone,
            fields: &state.fields,
        },
        fields: &state.fields,
        answers: &state.answers,
        program: ProgramVars {
            name: &program.definition.name,
        },
        progress: ProgressVars {
            done: state.steps_done,
            total: program.total_steps(),
        },
        streak: state.streak,
    };
    // Fields a contact lacks render as empty rather than failing the message.
    let mut lenient = minijinja::Environment::new();
    lenient.set_fuel(Some(crate::answer::prompts::FUEL));
    lenient.set_recursion_limit(32);
    match crate::answer::prompts::render_text("program", text, &vars) {
        Ok(out) => out,
        Err(_) => lenient
            .render_str(text, &vars)
            .ok()
            .filter(|t| t.len() <= crate::answer::prompts::MAX_OUTPUT_BYTES)
            .unwrap_or_default(),
    }
}

fn template(program: &Program, state: &State, t: &Option<TemplateRef>) -> Option<Template> {
    t.as_ref().map(|t| Template {
        name: t.name.clone(),
        language: t.language.clone(),
        parameters: t
            .parameters
            .iter()
            .map(|p| render(program, state, p))
            .collect(),
    })
}

fn buttons(defs: &[super::definition::ButtonDef]) -> Vec<Button> {
    defs.iter()
        .map(|b| Button {
            id: b.id.clone(),
            title: b.title.clone(),
            url: None,
        })
        .collect()
}

/// The question of an ask (also its re-prompt, with `text`).
pub fn question(program: &Program, state: &State, ask: &AskStep, text: &str) -> Outgoing {
    let buttons = buttons(&ask.buttons);
    Outgoing {
        step: ask.id.clone(),
        text: render(program, state, text),
        content: (!buttons.is_empty()).then(|| Content {
            buttons,
            ..Content::default()
        }),
        template: template(program, state, &ask.template),
    }
}

/// An answer as compared: trimmed, without closing punctuation, lower case.
fn norm(s: &str) -> String {
    s.trim()
        .trim_end_matches(['.', '!', '?'])
        .trim()
        .to_lowercase()
}

/// A recurring check-in's message.
pub fn checkin_message(program: &Program, state: &State, c: &Checkin) -> Outgoing {
    let buttons = buttons(&c.buttons);
    Outgoing {
        step: format!("checkin:{}", c.id),
        text: render(program, state, &c.text),
        content: (!buttons.is_empty()).then(|| Content {
            buttons,
            ..Content::default()
        }),
        template: template(program, state, &c.template),
    }
}

/// What a check-in's answer is: the button it names (by id or title), else the text itself.
pub fn checkin_value(c: &Checkin, said: &[&str]) -> Option<Value> {
    for s in said {
        let n = norm(s);
        if let Some(b) = c
            .buttons
            .iter()
            .find(|b| !n.is_empty() && (norm(&b.id) == n || norm(&b.title) == n))
        {
            return Some(Value::String(b.id.clone()));
        }
    }
    let text = said.first().map(|s| s.trim()).unwrap_or("");
    (!text.is_empty()).then(|| Value::String(text.to_owned()))
}

/// Runs from step `from` (or completes the program when `None`) until it rests.
pub fn run(
    program: &Program,
    state: &mut State,
    from: Option<&str>,
    now: i64,
    generated: &Generated,
) -> Outcome {
    let mut out = Outcome::default();
    let mut current = from.map(str::to_owned);
    for _ in 0..MAX_STEPS_PER_RUN {
        let Some(id) = current.take() else {
            out.completed = true;
            out.rest = Some((state.step.clone(), Waiting::Done));
            state.waiting = Waiting::Done;
            return out;
        };
        let Some(step) = program.step(&id) else {
            out.notes
                .push(format!("step {id:?} is not in this version"));
            out.completed = true;
            out.rest = Some((state.step.clone(), Waiting::Done));
            return out;
        };
        out.reached.push(id.clone());
        state.step = id.clone();
        match step {
            Step::Message(m) => {
                let text = match (&m.text, &m.generate) {
                    (Some(text), _) => render(program, state, text),
                    (None, Some(g)) => match generated.get(&m.id) {
                        Some(text) => text.clone(),
                        None => {
                            out.needs_generation = Some(GenerateRequest {
                                step: m.id.clone(),
                                prompt: render(program, state, &g.prompt),
                                fallback: render(program, state, &g.fallback),
                            });
                            return out;
                        }
                    },
                    (None, None) => String::new(),
                };
                let content = Content {
                    buttons: buttons(&m.buttons),
                    media: m.media.as_ref().map(|media| Media {
                        kind: media.kind.clone(),
                        url: Some(media.url.clone()),
                        id: None,
                        filename: None,
                    }),
                    ..Content::default()
                };
                out.messages.push(Outgoing {
                    step: m.id.clone(),
                    text,
                    content: (!content.is_empty()).then_some(content),
                    template: template(program, state, &m.template),
                });
                state.steps_done += 1;
                current = program.next_of(&id).map(str::to_owned);
            }
            Step::Ask(a) => {
                out.messages.push(question(program, state, a, &a.text));
                state.steps_done += 1;
                state.reprompts = 0;
                state.waiting = Waiting::Ask;
                out.rest = Some((id.clone(), Waiting::Ask));
                if let Some(t) = &a.timeout
                    && let Some(due) = t.after.after(now, &state.tz)
                {
                    out.schedule.push(FireSpec {
                        kind: "timeout",
                        step: id.clone(),
                        due_at: due,
                        epoch: None,
                    });
                }
                return out;
            }
            Step::Wait(w) => {
                let due = if let Some(d) = &w.duration {
                    d.after(now, &state.tz)
                } else if let Some(u) = &w.until {
                    u.next_after(now, &state.tz)
                } else if let (Some(field), Some(at)) = (&w.field, w.at) {
                    let value = state.fields.get(field).and_then(Value::as_str);
                    match value {
                        Some(v) => {
                            time::field_date(v, w.offset.as_ref().map(|o| &o.span), at, &state.tz)
                        }
                        None => {
                            out.notes.push(format!(
                                "wait {id:?}: the contact has no date in field {field:?}; going on"
                            ));
                            None
                        }
                    }
                } else {
                    None
                };
                match due {
                    // A date already past (a campaign date field): nothing to wait for.
                    Some(due) if due > now => {
                        state.waiting = Waiting::Wait;
                        out.rest = Some((id.clone(), Waiting::Wait));
                        out.schedule.push(FireSpec {
                            kind: "step",
                            step: id.clone(),
                            due_at: due,
                            epoch: None,
                        });
                        return out;
                    }
                    // Only an event ends this wait: it rests with no fire.
                    None if w.event.is_some() => {
                        state.waiting = Waiting::Wait;
                        out.rest = Some((id.clone(), Waiting::Wait));
                        return out;
                    }
                    _ => current = program.next_of(&id).map(str::to_owned),
                }
            }
            Step::Branch(b) => {
                let chosen = b
                    .cases
                    .iter()
                    .find(|c| holds(&c.when, state))
                    .map(|c| c.next.clone())
                    .or_else(|| b.default.clone());
                current = chosen;
            }
            Step::Set(s) => {
                for (k, v) in &s.fields {
                    let v = match v {
                        Value::String(text) => Value::String(render(program, state, text)),
                        other => other.clone(),
                    };
                    state.fields.insert(k.clone(), v);
                }
                for t in &s.add_tags {
                    if !state.tags.contains(t) {
                        state.tags.push(t.clone());
                    }
                }
                state.tags.retain(|t| !s.remove_tags.contains(t));
                current = program.next_of(&id).map(str::to_owned);
            }
            Step::Handoff(h) => {
                if let Some(text) = &h.text {
                    out.messages.push(Outgoing {
                        step: h.id.clone(),
                        text: render(program, state, text),
                        content: None,
                        template: None,
                    });
                }
                out.handoff = Some(
                    h.note
                        .as_deref()
                        .map(|n| render(program, state, n))
                        .unwrap_or_else(|| format!("program {:?}", program.definition.name)),
                );
                current = program.next_of(&id).map(str::to_owned);
            }
            Step::Complete(c) => {
                if let Some(text) = &c.text {
                    out.messages.push(Outgoing {
                        step: c.id.clone(),
                        text: render(program, state, text),
                        content: None,
                        template: None,
                    });
                }
                out.completed = true;
                state.waiting = Waiting::Done;
                out.rest = Some((id, Waiting::Done));
                return out;
            }
        }
    }
    out.notes
        .push("the run took too many steps without resting; stopped".into());
    out.rest = Some((state.step.clone(), Waiting::Wait));
    out
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.eq_ignore_ascii_case(y),
        _ => match (as_number(a), as_number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

/// Whether a branch condition holds.
pub fn holds(c: &Condition, state: &State) -> bool {
    if let Some(tag) = &c.tag {
        let has = state.tags.iter().any(|t| t.eq_ignore_ascii_case(tag));
        return match &c.equals {
            Some(Value::Bool(want)) => has == *want,
            _ => has,
        };
    }
    let value = match (&c.field, &c.answer) {
        (Some(f), _) => state.fields.get(f),
        (None, Some(a)) => state.answers.get(a),
        _ => None,
    };
    let Some(value) = value else {
        return false;
    };
    if let Some(want) = &c.equals
        && !same(value, want)
    {
        return false;
    }
    if let Some(list) = &c.one_of
        && !list.iter().any(|w| same(value, w))
    {
        return false;
    }
    if c.gte.is_some() || c.lte.is_some() {
        let Some(x) = as_number(value) else {
            return false;
        };
        if c.gte.is_some_and(|g| x < g) || c.lte.is_some_and(|l| x > l) {
            return false;
        }
    }
    true
}

/// How a message answers an ask: the value to save, or `None` when it matches nothing expected.
/// `said` is the message text and any ids it carries (a pressed button's).
pub fn match_answer(ask: &AskStep, said: &[&str]) -> Option<Value> {
    for s in said {
        let s = norm(s);
        if s.is_empty() {
            continue;
        }
        if let Some(b) = ask
            .buttons
            .iter()
            .find(|b| norm(&b.id) == s || norm(&b.title) == s)
        {
            return Some(Value::String(b.id.clone()));
        }
        for (value, words) in &ask.keywords {
            let hit = words.iter().any(|w| {
                let w = norm(w);
                !w.is_empty()
                    && (s == w
                        || s.split(|c: char| !c.is_alphanumeric() && c != '\'')
                            .any(|word| word == w))
            }) || norm(value) == s;
            if hit {
                return Some(Value::String(value.clone()));
            }
        }
        if let Some(range) = &ask.number
            && let Ok(x) = s.replace(',', ".").parse::<f64>()
            && x.is_finite()
            && x >= range.min
            && x <= range.max
        {
            return Some(if x.fract() == 0.0 && x.abs() < 1e15 {
                json!(x as i64)
            } else {
                json!(x)
            });
        }
    }
    if ask.free {
        let text = said.first().map(|s| s.trim()).unwrap_or("");
        if !text.is_empty() {
            return Some(Value::String(text.to_owned()));
        }
    }
    None
}
