//! Answers: what the bot says to one inbound message.
//!
//! Where it sits: called by the router, one turn at a time per conversation, outside any database
//! transaction (a model may take seconds). It returns text and citations; it never writes to the
//! store or talks to a channel — the router stores the answer with the turn, the outbox sends it.
//!
//! [`generate::KnowledgeResponder`] is the gateway's responder: it retrieves from the tenant's
//! knowledge and lets the language model write the answer from it, with citations, through the
//! templates in [`prompts`]; without a model (or while it fails) it quotes the best passage and
//! says so, and when nothing matches it says that instead of inventing.

pub mod generate;
pub mod grounding;
pub mod prompts;

use async_trait::async_trait;
use serde::Serialize;

pub use generate::{AnswerSettings, KnowledgeResponder};

/// The inbound message the bot is answering, with its context.
#[derive(Debug, Clone)]
pub struct Turn {
    pub tenant_id: String,
    pub conversation_id: String,
    pub message_id: String,
    /// The message's place in its conversation (history is what came before it).
    pub seq: i64,
    /// The channel's kind (`widget`, `telegram`, …).
    pub channel: String,
    pub text: String,
}

/// Where a statement in an answer came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Citation {
    /// The number the answer's text uses for this source (`[n]`).
    pub n: usize,
    pub document_id: String,
    pub title: String,
    /// The innermost heading above the passage; empty when it has none (or it is the title).
    pub section: String,
    pub chunk: i64,
}

/// The bot's answer to a turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub citations: Vec<Citation>,
    /// What kind of answer it is (the hand-off policies act on `no_answer` and fallbacks).
    pub kind: AnswerKind,
    /// How it was made — the passages retrieved and the prompt the model was given — kept in
    /// the evidence when moderation flags the answer. `None` from responders that keep none.
    pub trace: Option<Box<Trace>>,
    /// How a written answer stood against the passages it cites (recorded on the message);
    /// `None` for answers that were not written by a model.
    pub grounding: Option<grounding::Grounding>,
}

/// The passages an answer was made from and the prompt the model was given.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trace {
    pub retrieved: Vec<crate::knowledge::Hit>,
    /// The messages sent to the model (empty when the model was not called).
    pub prompt: Vec<crate::llm::ChatMessage>,
}

/// How an answer came about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AnswerKind {
    /// Written from the knowledge (by the model).
    #[default]
    Answered,
    /// Nothing relevant in the knowledge: the honest "I don't know".
    NoAnswer,
    /// The model failed or is absent: the best passage quoted, or an apology.
    Fallback,
}

/// Where a streaming responder sends the answer's text as it is written (the web widget shows it
/// as a preview). Only a preview: what is stored and delivered is the [`Answer`] returned.
pub trait Deltas: Send + Sync {
    fn delta(&self, text: &str);

    /// The text sent so far will not be the answer (the model failed mid-way): withdraw it.
    fn reset(&self) {}
}

/// For channels that show no preview.
pub struct NoDeltas;

impl Deltas for NoDeltas {
    fn delta(&self, _text: &str) {}
}

/// Produces the bot's answer to one turn. An error means "no answer could be produced now": the
/// router records it and leaves the turn to be retried.
#[async_trait]
pub trait Responder: Send + Sync + 'static {
    async fn respond(&self, turn: &Turn) -> anyhow::Result<Answer>;

    /// Like [`Responder::respond`], also sending the text to `deltas` as it is written. The
    /// default writes no preview. The deltas must add up to the returned text (a preview that
    /// differs is replaced by the stored answer when it arrives, but looks wrong meanwhile).
    async fn respond_streaming(&self, turn: &Turn, deltas: &dyn Deltas) -> anyhow::Result<Answer> {
        let _ = deltas;
        self.respond(turn).await
    }
}
