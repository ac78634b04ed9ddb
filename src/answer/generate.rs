//! The knowledge responder: retrieve, then let the model write the answer from what was found —
//! or say honestly why not.
//!
//! One turn:
//! 1. Retrieve the tenant's best chunks for the question ([`Knowledge::search`], the same call as
//!    the retrieval debugger). Nothing found → the `no_answer` template (no model call: there
//!    is nothing to answer from, and a model would invent).
//! 2. Build the chat: system message = `persona` + `answer` (the numbered sources), then the
//!    conversation's history, then the question — all within the model's context
//!    ([`Budget`]): the answer's tokens are reserved first, sources are dropped from the least
//!    relevant, history from the oldest.
//! 3. Generate through the guard (concurrency limit, time limits, circuit breaker), streaming
//!    the text to the channel's preview.
//! 4. Citations: only the sources the answer names (`[2]`), one per document and section. Then
//!    the grounding check ([`grounding`]): an answer that names none, or whose sentences its
//!    cited passages do not support, is ungrounded and follows the tenant's policy (quote the
//!    best passage instead, append a note, hand off, or keep), recorded on the message.
//! 5. The model unreachable, failing, silent or empty → the `fallback` template: the best passage
//!    quoted as it is, marked as such. A preview already shown is withdrawn first.

use std::sync::Arc;

use async_trait::async_trait;
use metrics::counter;
use tracing::warn;

use super::prompts::{Context, Prompts, Source, off_runtime};
use super::{Answer, AnswerKind, Citation, Deltas, Responder, Trace, Turn, grounding};
use crate::knowledge::chunk::count_tokens;
use crate::knowledge::settings::Ungrounded;
use crate::knowledge::{Hit, Knowledge};
use crate::llm::guard::Guarded;
use crate::llm::{ChatMessage, ChatRequest, LlmError, Role};

/// How answers are sized.
#[derive(Debug, Clone, Copy)]
pub struct AnswerSettings {
    /// The chat model's context window, in tokens.
    pub context_tokens: usize,
    /// Reserved for the answer (and its cap).
    pub max_answer_tokens: u32,
    pub temperature: f32,
    /// Earlier messages considered for the history (then cut to the budget).
    pub history_messages: i64,
}

impl Default for AnswerSettings {
    fn default() -> Self {
        AnswerSettings {
            context_tokens: 4096,
            max_answer_tokens: 512,
            temperature: 0.2,
            history_messages: 20,
        }
    }
}

/// Answers from the tenant's knowledge, with a model when one is configured.
#[derive(Clone)]
pub struct KnowledgeResponder {
    knowledge: Knowledge,
    model: Option<Arc<Guarded>>,
    settings: AnswerSettings,
}

/// Longest quoted passage in a fallback answer, in characters.
const MAX_QUOTE: usize = 1_200;

impl KnowledgeResponder {
    pub fn new(
        knowledge: Knowledge,
        model: Option<Arc<Guarded>>,
        settings: AnswerSettings,
    ) -> KnowledgeResponder {
        KnowledgeResponder {
            knowledge,
            model,
            settings,
        }
    }

    /// Without a model: quotes the best passage (the `fallback` template, reason `no_model`).
    pub fn extractive(knowledge: Knowledge) -> KnowledgeResponder {
        KnowledgeResponder::new(knowledge, None, AnswerSettings::default())
    }

    async fn answer(&self, turn: &Turn, deltas: &dyn Deltas) -> anyhow::Result<Answer> {
        let store = self.knowledge.store();
        let tenant = store.answer_context(&turn.tenant_id).await?;
        let prompts = Prompts::with_overrides(tenant.templates.clone());
        let mut context = Context {
            assistant: tenant.tenant_name.clone().unwrap_or_default(),
            channel: turn.channel.clone(),
            question: turn.text.clone(),
            ..Context::default()
        };
        // No documents: nothing to search.
        let has_documents = tenant.has_documents;
        let hits = if has_documents {
            self.knowledge
                .search(&turn.tenant_id, &turn.text, self.knowledge.config().k)
                .await?
        } else {
            Vec::new()
        };
        if hits.is_empty() {
            context.reason = Some(
                if has_documents {
                    "no_match"
                } else {
                    "no_documents"
                }
                .into(),
            );
            counter!("switchboard_answers_total", "kind" => "no_answer").increment(1);
            let text = prompts.render_where_cheapest("no_answer", context).await?;
            return Ok(Answer {
                trace: None,
                grounding: None,
                kind: AnswerKind::NoAnswer,
                text,
                citations: Vec::new(),
            });
        }
        let Some(model) = &self.model else {
            return self.fallback(prompts, context, &hits, "no_model").await;
        };

        let history = store
            .conversation_history(
                &turn.conversation_id,
                turn.seq,
                self.settings.history_messages,
            )
            .await?;
        let budget = Budget::new(&self.settings);
        // Templates render on the blocking pool, fuelled and within a time limit: a tenant's
        // template cannot hold the async workers.
        let (fitted, prompts, context) = {
            let (prompts, mut context, hits) = (prompts, context, hits.clone());
            off_runtime(move || {
                let fitted = budget.fit(&prompts, &mut context, &hits, &history);
                (fitted, prompts, context)
            })
            .await?
        };
        let Some((messages, used)) = fitted? else {
            warn!("the question alone does not fit the model's context; quoting instead");
            return self.fallback(prompts, context, &hits, "error").await;
        };
        let request = ChatRequest {
            messages,
            max_tokens: self.settings.max_answer_tokens,
            temperature: self.settings.temperature,
            format: None,
        };
        let mut streamed = false;
        let result = model
            .chat(&request, &mut |text: &str| {
                streamed = true;
                deltas.delta(text);
            })
            .await;
        match result {
            Ok(generated) if !generated.text.trim().is_empty() => {
                counter!("switchboard_answers_total", "kind" => "generated").increment(1);
                let sources = &hits[..used];
                let cited = cited_numbers(&generated.text, sources.len());
                let citations = cite(&generated.text, sources);
                let mut text = generated.text.trim().to_owned();
                // Cut by the answer's token cap: shown as cut, not as a finished sentence.
                if generated.finish_reason.as_deref() == Some("length") {
                    text.push('…');
                }
                let settings = self.knowledge.settings(&turn.tenant_id).await?;
                let policy = &settings.grounding;
                let mut grounding = grounding::check(
                    &text,
                    &cited,
                    sources,
                    policy.max_unsupported,
                    self.knowledge
                        .embedder()
                        .map(|e| e.as_ref() as &dyn crate::llm::Embedder),
                )
                .await;
                let trace = Some(Box::new(Trace {
                    retrieved: hits.clone(),
                    prompt: request.messages,
                }));
                if !grounding.grounded {
                    grounding.action = policy.ungrounded.as_str();
                    counter!("switchboard_answers_ungrounded_total", "action" => grounding.action)
                        .increment(1);
                    match policy.ungrounded {
                        Ungrounded::Keep => {}
                        Ungrounded::Note => {
                            text.push_str("\n\n");
                            text.push_str(&policy.note);
                        }
                        Ungrounded::Quote | Ungrounded::Handoff => {
                            if streamed {
                                deltas.reset();
                            }
                            let mut quoted =
                                self.fallback(prompts, context, &hits, "ungrounded").await?;
                            quoted.trace = trace;
                            quoted.grounding = Some(grounding);
                            return Ok(quoted);
                        }
                    }
                }
                Ok(Answer {
                    trace,
                    text,
                    citations,
                    kind: AnswerKind::Answered,
                    grounding: Some(grounding),
                })
            }
            other => {
                let reason = match &other {
                    Ok(_) => "empty",
                    Err(LlmError::Timeout(_)) => "timeout",
                    Err(LlmError::Unavailable(_) | LlmError::Unreachable(_)) => "unavailable",
                    Err(_) => "error",
                };
                if let Err(e) = &other {
                    warn!(error = %e, model = %model.model().describe(), "no answer from the language model; quoting the best passage");
                }
                if streamed {
                    deltas.reset();
                }
                self.fallback(prompts, context, &hits, reason).await
            }
        }
    }

    async fn fallback(
        &self,
        prompts: Prompts,
        mut context: Context,
        hits: &[Hit],
        reason: &str,
    ) -> anyhow::Result<Answer> {
        let best = &hits[0];
        let mut quote: String = best.text.chars().take(MAX_QUOTE).collect();
        if quote.len() < best.text.len() {
            quote.push('…');
        }
        context.source = Some(Source {
            n: 1,
            title: best.title.clone(),
            section: section(best),
            text: quote,
        });
        context.reason = Some(reason.to_owned());
        counter!("switchboard_answers_total", "kind" => "fallback", "reason" => reason.to_owned())
            .increment(1);
        let text = prompts.render_where_cheapest("fallback", context).await?;
        Ok(Answer {
            grounding: None,
            trace: Some(Box::new(Trace {
                retrieved: hits.to_vec(),
                prompt: Vec::new(),
            })),
            kind: AnswerKind::Fallback,
            text,
            citations: vec![citation(1, best)],
        })
    }
}

#[async_trait]
impl Responder for KnowledgeResponder {
    async fn respond(&self, turn: &Turn) -> anyhow::Result<Answer> {
        self.answer(turn, &super::NoDeltas).await
    }

    async fn respond_streaming(&self, turn: &Turn, deltas: &dyn Deltas) -> anyhow::Result<Answer> {
        self.answer(turn, deltas).await
    }
}

/// The innermost heading names the passage (the path often starts with the title).
fn section(hit: &Hit) -> String {
    let heading = hit.heading.rsplit(" > ").next().unwrap_or("");
    if heading == hit.title {
        String::new()
    } else {
        heading.to_owned()
    }
}

fn citation(n: usize, hit: &Hit) -> Citation {
    Citation {
        n,
        document_id: hit.document_id.clone(),
        title: hit.title.clone(),
        section: section(hit),
        chunk: hit.chunk,
    }
}

/// The source numbers an answer names as `[n]` (also `[1, 3]` and `[1][2]`), in the order first
/// named; numbers outside `1..=sources` are not citations.
pub fn cited_numbers(text: &str, sources: usize) -> Vec<usize> {
    let mut named: Vec<usize> = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some((inside, len)) = grounding::marker(rest) else {
            continue;
        };
        for part in inside.split([',', ' ']).filter(|p| !p.is_empty()) {
            if let Ok(n) = part.parse::<usize>()
                && (1..=sources).contains(&n)
                && !named.contains(&n)
            {
                named.push(n);
            }
        }
        rest = &rest[len..];
    }
    named
}

/// The citations of an answer: only the sources it names (`[n]`), one per document and section
/// (the first number naming it). An answer that names none has none: it is ungrounded.
pub fn cite(text: &str, sources: &[Hit]) -> Vec<Citation> {
    let mut citations: Vec<Citation> = Vec::new();
    for n in cited_numbers(text, sources.len()) {
        let c = citation(n, &sources[n - 1]);
        if !citations
            .iter()
            .any(|o| o.document_id == c.document_id && o.section == c.section)
        {
            citations.push(c);
        }
    }
    citations
}

/// Fits a prompt into the model's context window.
///
/// Tokens are counted with `o200k_base`, which is not the model's tokenizer; small models'
/// vocabularies cut English into more pieces, so counts are scaled by 1.3 (plus each message's
/// framing), leaving room rather than overflowing.
pub struct Budget {
    available: usize,
}

/// Framing tokens per chat message (role markers).
const PER_MESSAGE: usize = 8;

fn estimate(text: &str) -> usize {
    count_tokens(text) * 13 / 10 + PER_MESSAGE
}

impl Budget {
    pub fn new(settings: &AnswerSettings) -> Budget {
        Budget {
            available: settings
                .context_tokens
                .saturating_sub(settings.max_answer_tokens as usize),
        }
    }

    /// The messages, and how many sources (the best ones) made it in; `None` when not even the
    /// question with one cut-down source fits.
    pub fn fit(
        &self,
        prompts: &Prompts,
        context: &mut Context,
        hits: &[Hit],
        history: &[super::super::store::answers::HistoryLine],
    ) -> anyhow::Result<Option<(Vec<ChatMessage>, usize)>> {
        let question = estimate(&context.question);
        let persona = prompts.render("persona", context)?;
        let mut sources: Vec<Source> = hits
            .iter()
            .enumerate()
            .map(|(i, hit)| Source {
                n: i + 1,
                title: hit.title.clone(),
                section: section(hit),
                text: hit.text.clone(),
            })
            .collect();
        // Drop sources from the least relevant until the system message and question fit.
        let system = loop {
            context.sources = Some(sources.clone());
            let system = format!("{persona}\n\n{}", prompts.render("answer", context)?);
            if estimate(&system) + question <= self.available {
                break system;
            }
            if sources.len() > 1 {
                sources.pop();
                continue;
            }
            // One source left and still too long: cut its text to what fits.
            let Some(only) = sources.first_mut() else {
                return Ok(None);
            };
            let over = estimate(&system) + question - self.available;
            let keep_tokens = count_tokens(&only.text).saturating_sub(over + 16);
            if keep_tokens < 16 {
                return Ok(None);
            }
            let keep_chars =
                only.text.chars().count() * keep_tokens / count_tokens(&only.text).max(1);
            only.text = only.text.chars().take(keep_chars).collect::<String>() + "…";
        };
        let used = sources.len();
        let mut remaining = self.available - estimate(&system) - question;
        // History, newest first, while it fits; then back in order.
        let mut kept = Vec::new();
        for line in history.iter().rev() {
            let cost = estimate(&line.text);
            if cost > remaining {
                break;
            }
            remaining -= cost;
            let role = if line.author == "contact" {
                Role::User
            } else {
                Role::Assistant
            };
            kept.push(ChatMessage::new(role, line.text.clone()));
        }
        kept.reverse();
        let mut messages = Vec::with_capacity(kept.len() + 2);
        messages.push(ChatMessage::new(Role::System, system));
        messages.extend(kept);
        messages.push(ChatMessage::new(Role::User, context.question.clone()));
        Ok(Some((messages, used)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::answers::HistoryLine;

    fn hit(n: i64, text: &str) -> Hit {
        Hit {
            document_id: format!("doc{n}"),
            title: format!("Doc {n}"),
            chunk: n,
            heading: format!("Doc {n} > Part {n}"),
            text: text.to_owned(),
            score: 1.0 / n as f32,
            similarity: None,
        }
    }

    #[test]
    fn citations_are_only_the_sources_named_once_per_document_and_section() {
        let hits = [hit(1, "a"), hit(2, "b"), hit(3, "c")];
        let ids = |c: Vec<Citation>| c.into_iter().map(|c| c.document_id).collect::<Vec<_>>();
        assert_eq!(
            ids(cite("Sleep more [2]. Also [3][2].", &hits)),
            ["doc2", "doc3"]
        );
        assert_eq!(ids(cite("See [1, 3].", &hits)), ["doc1", "doc3"]);
        // Out of range and non-numbers are not citations; naming none cites nothing.
        assert!(cite("[7] [link](x) [a] [0]", &hits).is_empty());
        assert!(cite("no markers", &hits[..1]).is_empty());
        assert_eq!(cited_numbers("[7] [2] [1,2] [x]", 3), [2, 1]);
        // Each carries the number the text used for it and the passage's section.
        let named = cite("Sleep more [3].", &hits);
        assert_eq!(named.len(), 1);
        assert_eq!((named[0].n, named[0].section.as_str()), (3, "Part 3"));
        // Two chunks of one document and section are one citation (the first number).
        let mut same = hit(1, "more of a");
        same.chunk = 9;
        let sources = [hit(1, "a"), same, hit(2, "b")];
        let c = cite("One [2]. Two [1]. Three [3].", &sources);
        assert_eq!(
            c.iter()
                .map(|c| (c.n, c.document_id.as_str()))
                .collect::<Vec<_>>(),
            [(2, "doc1"), (3, "doc2")]
        );
        // Many brackets stay linear.
        let hostile = "[".repeat(300_000);
        let started = std::time::Instant::now();
        assert!(cite(&hostile, &hits).is_empty());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn the_budget_keeps_the_best_sources_and_the_latest_history() -> anyhow::Result<()> {
        let settings = AnswerSettings {
            context_tokens: 700,
            max_answer_tokens: 200,
            ..AnswerSettings::default()
        };
        let long = "Regular sleep matters for everyone who wants to rest well. ".repeat(12);
        let hits: Vec<Hit> = (1..=5).map(|n| hit(n, &long)).collect();
        let history: Vec<HistoryLine> = (0..30)
            .map(|i| HistoryLine {
                author: if i % 2 == 0 { "contact" } else { "bot" }.into(),
                text: format!("message number {i} about sleeping well at night"),
            })
            .collect();
        let mut context = Context {
            assistant: "Demo".into(),
            channel: "api".into(),
            question: "How do I sleep better?".into(),
            ..Context::default()
        };
        let (messages, used) = Budget::new(&settings)
            .fit(&Prompts::default(), &mut context, &hits, &history)?
            .ok_or_else(|| anyhow::anyhow!("nothing fits"))?;
        let total: usize = messages.iter().map(|m| estimate(&m.content)).sum();
        assert!(
            total <= 500,
            "{total} estimated tokens over the budget of 500"
        );
        assert!((1..5).contains(&used), "{used} sources kept");
        assert!(messages[0].content.contains("[1] Doc 1"));
        assert!(!messages[0].content.contains(&format!("[{}]", used + 1)));
        // The latest history made it, in order, and the question is last.
        let kept: Vec<&str> = messages[1..messages.len() - 1]
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        assert!(!kept.is_empty() && kept.len() < 30);
        assert_eq!(
            kept.last().copied(),
            Some("message number 29 about sleeping well at night")
        );
        assert_eq!(messages[messages.len() - 1].role, Role::User);
        assert_eq!(
            messages[1].role,
            if (30 - kept.len()).is_multiple_of(2) {
                Role::User
            } else {
                Role::Assistant
            }
        );

        // A tiny window: one cut-down source, no history; smaller still: nothing fits.
        let tiny = AnswerSettings {
            context_tokens: 420,
            max_answer_tokens: 100,
            ..AnswerSettings::default()
        };
        let (messages, used) = Budget::new(&tiny)
            .fit(&Prompts::default(), &mut context, &hits, &history)?
            .ok_or_else(|| anyhow::anyhow!("nothing fits"))?;
        assert_eq!(used, 1);
        let total: usize = messages.iter().map(|m| estimate(&m.content)).sum();
        assert!(total <= 320, "{total}");
        let none = AnswerSettings {
            context_tokens: 150,
            max_answer_tokens: 100,
            ..AnswerSettings::default()
        };
        assert!(
            Budget::new(&none)
                .fit(&Prompts::default(), &mut context, &hits, &history)?
                .is_none()
        );
        Ok(())
    }
}
