//! Answers: what the bot says to one inbound message.
//!
//! Where it sits: called by the router, one turn at a time per conversation, outside any database
//! transaction (a model may take seconds). It returns text and citations; it never writes to the
//! store or talks to a channel — the router stores the answer with the turn, the outbox sends it.
//!
//! Until language models are connected, [`ExtractiveResponder`] answers from the tenant's
//! knowledge by quoting the best passage (with its citation), and says so honestly when there is
//! no knowledge or nothing matches. [`NoKnowledgeResponder`] is the fixed reply for tools.

use async_trait::async_trait;
use serde::Serialize;

/// The inbound message the bot is answering, with its context.
#[derive(Debug, Clone)]
pub struct Turn {
    pub tenant_id: String,
    pub conversation_id: String,
    pub message_id: String,
    pub text: String,
}

/// Where a statement in an answer came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Citation {
    pub document_id: String,
    pub title: String,
    pub chunk: i64,
}

/// The bot's answer to a turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub citations: Vec<Citation>,
}

/// Where a streaming responder sends the answer's text as it is written (the web widget shows it
/// as a preview). Only a preview: what is stored and delivered is the [`Answer`] returned.
pub trait Deltas: Send + Sync {
    fn delta(&self, text: &str);
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

/// The built-in responder while no knowledge is configured: says so instead of inventing.
#[derive(Debug, Default, Clone)]
pub struct NoKnowledgeResponder;

/// What [`NoKnowledgeResponder`] says.
pub const NO_KNOWLEDGE_REPLY: &str = "Thanks for your message. I can't answer it yet: no knowledge has been \
configured for this assistant, so anything I said would be made up. Your message has been saved.";

#[async_trait]
impl Responder for NoKnowledgeResponder {
    async fn respond(&self, _turn: &Turn) -> anyhow::Result<Answer> {
        Ok(Answer {
            text: NO_KNOWLEDGE_REPLY.to_owned(),
            citations: Vec::new(),
        })
    }
}

/// What the bot says when the tenant has documents but none matches the question.
pub const NOT_FOUND_REPLY: &str = "I couldn't find anything about that in the material I answer \
from, so I'd rather not guess. Could you rephrase it, or ask about something else?";

/// Answers from the tenant's knowledge without a language model: the best-matching passage,
/// quoted as it is, with its citation, and marked as such. This is the honest fallback when no
/// model is connected (or it is down); a tenant without documents gets [`NO_KNOWLEDGE_REPLY`],
/// a question nothing matches gets [`NOT_FOUND_REPLY`].
#[derive(Clone)]
pub struct ExtractiveResponder {
    knowledge: crate::knowledge::Knowledge,
}

impl ExtractiveResponder {
    pub fn new(knowledge: crate::knowledge::Knowledge) -> ExtractiveResponder {
        ExtractiveResponder { knowledge }
    }
}

/// Longest quoted passage, in characters.
const MAX_QUOTE: usize = 1_200;

#[async_trait]
impl Responder for ExtractiveResponder {
    async fn respond(&self, turn: &Turn) -> anyhow::Result<Answer> {
        let k = self.knowledge.config().k;
        let hits = self
            .knowledge
            .search(&turn.tenant_id, &turn.text, k)
            .await?;
        let Some(best) = hits.first() else {
            let has_documents = self.knowledge.has_documents(&turn.tenant_id).await?;
            return Ok(Answer {
                text: if has_documents {
                    NOT_FOUND_REPLY
                } else {
                    NO_KNOWLEDGE_REPLY
                }
                .to_owned(),
                citations: Vec::new(),
            });
        };
        let mut quote: String = best.text.chars().take(MAX_QUOTE).collect();
        if quote.len() < best.text.len() {
            quote.push('…');
        }
        // The innermost heading names the passage (the path often starts with the title).
        let heading = best.heading.rsplit(" > ").next().unwrap_or("");
        let section = if heading.is_empty() || heading == best.title {
            best.title.clone()
        } else {
            format!("{} — {heading}", best.title)
        };
        Ok(Answer {
            text: format!(
                "From “{section}”:\n\n{quote}\n\n(Quoted from the knowledge base as it is: no language model is connected to write a fuller answer.)"
            ),
            citations: vec![Citation {
                document_id: best.document_id.clone(),
                title: best.title.clone(),
                chunk: best.chunk,
            }],
        })
    }
}
