//! The router: one conversation at a time, in order; many conversations at once.
//!
//! Where it sits: after ingest (which stored the message and acknowledged the sender), before the
//! outbox (which sends what the router stored). Its work queue is the database itself: every
//! inbound row with `processed_at IS NULL`. A restart loses nothing — [`Router::resume_pending`]
//! finds those rows again.
//!
//! Ordering: `kick(conversation)` makes sure exactly one task drains that conversation, taking its
//! unanswered messages by `seq`, one at a time. A kick that arrives while the task runs sets a
//! "run again" flag instead of starting a second task, so no wake-up is lost and no two turns of
//! one conversation ever overlap. Different conversations run concurrently; the next turns of
//! the conversations ready at the same moment are read in one query, and their completions are
//! group-committed.
//!
//! What it must never do: answer a turn twice. `Store::complete_turn` marks the turn processed in
//! the same transaction that stores the reply and its outbox row, and refuses a turn that is
//! already processed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{counter, histogram};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::answer::{Answer, Responder, Turn};
use crate::commands;
use crate::moderation::{Inbound, Moderation, Outbound};
use crate::outbox::Channels;
use crate::registry::Acknowledgement;
use crate::store::batch::Batcher;
use crate::store::messages::{Completed, PendingTurn, ReplyDraft};
use crate::store::{Store, now_ms};
use switchboard_channel::ChannelKind;

/// Failed attempts at a turn before the responder's failure is answered with [`APOLOGY`].
const GIVE_UP_AFTER_FAILURES: u32 = 3;

/// What the bot says when it could not produce an answer at all.
pub const APOLOGY: &str = "Sorry, I couldn't answer that just now. Your message has been saved; \
please try again in a little while.";

/// Most turns completed in one transaction.
const MAX_BATCH: usize = 256;

/// Handle to the router. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    store: Store,
    /// Group commit of completed turns across conversations. `None` on SQLite, where turns
    /// join the store's tick writer (see `store::tick`).
    completions: Option<Batcher<(PendingTurn, Option<ReplyDraft>), Completed>>,
    /// Where replies claimed with their turn go to the delivery worker.
    handoff: Option<crate::outbox::Handoff>,
    responder: Arc<dyn Responder>,
    /// For the signals around a turn: typing indicators, read receipts, button acknowledgements.
    channels: Option<Channels>,
    /// Conversations with a running drain task → whether another pass was requested meanwhile.
    active: Mutex<HashMap<String, bool>>,
    /// Reads the next pending turn of the conversations ready at the same moment in one query
    /// (one hop to a database connection per batch, not per turn). As many batches at once as
    /// the store runs write batches, never more than the read pool's size. A turn waiting for
    /// its completion to commit holds no read.
    turns: Batcher<String, Option<(PendingTurn, bool)>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    outbox_wake: Arc<Notify>,
    waiters: Waiters,
    /// Coaching programs: `/join`, `/progress`, keywords and answers to a program's questions
    /// are handled there before the responder.
    programs: Option<crate::programs::Programs>,
    /// The tenants' moderation policies, applied to every inbound message and bot answer.
    moderation: Option<Arc<Moderation>>,
}

impl Router {
    /// A router whose `kick`s start work only when `enabled` (tools and tests that drive turns
    /// by hand with [`Router::process_next`] pass `false`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        responder: Arc<dyn Responder>,
        outbox_wake: Arc<Notify>,
        max_concurrent_reads: usize,
        enabled: bool,
        channels: Option<Channels>,
        programs: Option<crate::programs::Programs>,
        moderation: Option<Arc<Moderation>>,
        handoff: Option<crate::outbox::Handoff>,
    ) -> Router {
        let turns = {
            let store = store.clone();
            let workers = store.write_parallelism().min(max_concurrent_reads.max(1));
            Batcher::spawn(workers, MAX_BATCH, move |ids: Vec<String>| {
                let store = store.clone();
                // A batch that fails is read again conversation by conversation: one
                // unreadable turn must not stall the others.
                async move {
                    crate::store::batch::all_or_each(ids, |ids| {
                        let store = store.clone();
                        async move { store.next_pending_turns(&ids).await }
                    })
                    .await
                }
            })
        };
        Router {
            inner: Arc::new(Inner {
                enabled,
                completions: store.tick().is_none().then(|| {
                    let store = store.clone();
                    let handoff = handoff.clone();
                    Batcher::spawn(store.write_parallelism(), MAX_BATCH, move |turns| {
                        let store = store.clone();
                        let handoff = handoff.clone();
                        async move {
                            let lease = handoff.as_ref().map(|h| h.lease_ms());
                            let completed = store.complete_turns(turns, lease).await;
                            // Replies claimed with their turn go to the delivery worker now,
                            // not at its next poll.
                            if let Some(handoff) = &handoff {
                                handoff.send(
                                    completed
                                        .iter()
                                        .filter_map(|c| c.as_ref().ok()?.claimed.clone())
                                        .collect(),
                                );
                            }
                            completed
                        }
                    })
                }),
                handoff,
                store,
                responder,
                channels,
                active: Mutex::new(HashMap::new()),
                turns,
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                outbox_wake,
                waiters: Waiters::default(),
                programs,
                moderation,
            }),
        }
    }

    /// Makes sure the conversation's pending turns get processed.
    pub fn kick(&self, conversation_id: &str) {
        self.kick_with(conversation_id, None);
    }

    /// [`Router::kick`], with the conversation's oldest pending turn when the caller has it
    /// already (the ingest that stored it, see `Ingested::turn`): a conversation not being
    /// processed starts on it without reading it back; one being processed reads its next
    /// turn as always (the given one is dropped: it is in the database).
    pub fn kick_with(&self, conversation_id: &str, turn: Option<Box<PendingTurn>>) {
        if !self.inner.enabled || self.inner.shutdown.is_cancelled() {
            return; // stays in the database; resume_pending picks it up on the next start
        }
        {
            let mut active = lock(&self.inner.active);
            if let Some(again) = active.get_mut(conversation_id) {
                *again = true;
                return;
            }
            active.insert(conversation_id.to_owned(), false);
        }
        let inner = self.inner.clone();
        let conversation_id = conversation_id.to_owned();
        let span = info_span!("conversation", conversation = %conversation_id);
        self.inner
            .tracker
            .spawn(async move { inner.drain(conversation_id, turn).await }.instrument(span));
    }

    /// Kicks every conversation with unanswered messages (after a restart). Returns how many.
    pub async fn resume_pending(&self) -> anyhow::Result<usize> {
        let pending = self.inner.store.conversations_with_pending_turns().await?;
        for conversation_id in &pending {
            self.kick(conversation_id);
        }
        Ok(pending.len())
    }

    /// Processes the oldest pending turn of a conversation, if any (`true` if there was one).
    /// The same step the drain tasks run; public so tests can drive the router by hand.
    pub async fn process_next(&self, conversation_id: &str) -> anyhow::Result<bool> {
        Ok(self
            .inner
            .process_next(conversation_id, false)
            .await?
            .is_some())
    }

    /// Waits for an inbound message to be processed, up to `timeout`. Returns whether it was.
    pub async fn wait_processed(
        &self,
        tenant_id: &str,
        inbound_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<Option<Option<crate::store::messages::MessageView>>> {
        let registration = self.inner.waiters.register(inbound_id);
        let notified = registration.notify.notified();
        tokio::pin!(notified);
        // Enabled before the check: a wake-up between the check and the await is not lost.
        notified.as_mut().enable();
        if let Some(outcome) = self.inner.store.turn_outcome(tenant_id, inbound_id).await? {
            return Ok(Some(outcome));
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        Ok(self.inner.store.turn_outcome(tenant_id, inbound_id).await?)
    }

    /// Wakes the delivery worker (after something was queued outside the router).
    pub fn wake_outbox(&self) {
        self.inner.outbox_wake.notify_one();
    }

    /// Stops starting turns, lets the turns in progress finish, and returns when all have.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

impl Inner {
    /// Completes a turn (with its reply, if any) once its batch committed; a reply claimed with
    /// it goes to the delivery worker.
    async fn complete(
        &self,
        turn: PendingTurn,
        reply: Option<ReplyDraft>,
    ) -> Result<Completed, sqlx::Error> {
        if let Some(completions) = &self.completions {
            return completions.submit((turn, reply)).await;
        }
        let tick = self.store.tick().ok_or(sqlx::Error::PoolClosed)?;
        let lease = self.handoff.as_ref().map(|h| h.lease_ms());
        let completed = tick.complete(turn, reply, lease).await?;
        if let (Some(handoff), Some(claimed)) = (&self.handoff, &completed.claimed) {
            handoff.send(vec![claimed.clone()]);
        }
        Ok(completed)
    }

    /// Processes the conversation's turns in order until none is left. `first`: its oldest
    /// pending turn, known already (processed without a read; after a failure it is read again
    /// like any other).
    async fn drain(self: Arc<Self>, conversation_id: String, first: Option<Box<PendingTurn>>) {
        let mut first = first;
        let mut failures = 0u32;
        loop {
            loop {
                if self.shutdown.is_cancelled() {
                    lock(&self.active).remove(&conversation_id);
                    return;
                }
                let give_up = failures >= GIVE_UP_AFTER_FAILURES;
                let step = match first.take() {
                    // Whether another turn waits behind it is not known: `false` ends this
                    // pass, and a message stored since kicked us ("run again" below).
                    Some(turn) => Box::pin(self.process(*turn, give_up))
                        .await
                        .map(|()| Some(false)),
                    None => self.process_next(&conversation_id, give_up).await,
                };
                match step {
                    Ok(Some(true)) => failures = 0,
                    // That was the last one: a message stored since kicked us ("run again").
                    Ok(Some(false)) | Ok(None) => break,
                    Err(e) => {
                        // The turn stays unprocessed; try again after a pause (capped at 30 s).
                        failures += 1;
                        let pause = Duration::from_millis(250 * 2u64.pow(failures.min(7)));
                        warn!(error = %format!("{e:#}"), ?pause, "turn failed; will retry");
                        counter!("switchboard_processed_total", "outcome" => "error").increment(1);
                        tokio::select! {
                            _ = self.shutdown.cancelled() => {}
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
            let mut active = lock(&self.active);
            match active.get_mut(&conversation_id) {
                Some(again) if *again => *again = false,
                _ => {
                    active.remove(&conversation_id);
                    return;
                }
            }
        }
    }

    /// `give_up`: the turn has failed repeatedly; if the responder fails again, answer with an
    /// apology instead of trying forever (the conversation's later messages wait behind it).
    /// `None`: nothing was pending; `Some(more)`: a turn was processed, and whether another one
    /// was already waiting behind it.
    async fn process_next(
        &self,
        conversation_id: &str,
        give_up: bool,
    ) -> anyhow::Result<Option<bool>> {
        let next = self.turns.submit(conversation_id.to_owned()).await?;
        let Some((turn, more)) = next else {
            return Ok(None);
        };
        // Boxed: a turn's future is ~9 KB (every path a turn can take), and unboxed it made the
        // conversation task that big, copied whole at every spawn — one per message.
        Box::pin(self.process(turn, give_up)).await?;
        Ok(Some(more))
    }

    async fn process(&self, turn: PendingTurn, give_up: bool) -> anyhow::Result<()> {
        // Automatic mail (auto-replies, bounces, bulk, spam) is stored, never answered: no mail
        // loops.
        let answerable = !matches!(
            turn.kind.as_str(),
            "reaction"
                | "reaction_removed"
                | "revoke"
                | "edit"
                | "system"
                | "unaddressed"
                | "auto_reply"
                | "bounce"
                | "bulk"
                | "spam"
        );
        // Moderation before anything answers: a crisis is answered at once with the safe
        // message, a blocked contact gets nothing, a held message waits for a person. Commands
        // are not moderated (STOP must always work).
        let mut moderated: Option<Option<ReplyDraft>> = None;
        if let Some(moderation) = &self.moderation
            && turn.conversation_status != "closed"
            && answerable
            && commands::parse(&turn.kind, &turn.text).is_none()
        {
            match moderation.inbound(&turn).await {
                Ok(Inbound::Continue) => {}
                Ok(Inbound::Reply(text)) => {
                    moderated = Some(Some(ReplyDraft {
                        text,
                        citations_json: "[]".to_owned(),
                        grounding_json: None,
                    }));
                }
                Ok(Inbound::Silent) => moderated = Some(None),
                Err(e) if give_up => {
                    warn!(error = %format!("{e:#}"), "moderation failed on this turn repeatedly; answering it unmoderated");
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(reply) = moderated {
            counter!("switchboard_processed_total", "outcome" => "moderated").increment(1);
            let completed = self.complete(turn.clone(), reply).await?;
            self.wake_outbox_for(&completed);
            self.waiters.wake(&turn.message_id);
            return Ok(());
        }
        // A program's question answered, `/join`, `/progress`, a program keyword: handled (and
        // the turn completed with its replies) by the program engine.
        if let Some(programs) = &self.programs {
            match programs.handle_turn(&turn).await {
                Ok(true) => {
                    counter!("switchboard_processed_total", "outcome" => "program").increment(1);
                    self.waiters.wake(&turn.message_id);
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) if give_up => {
                    warn!(error = %format!("{e:#}"), "the program engine failed on this turn repeatedly; answering it normally");
                }
                Err(e) => return Err(e),
            }
        }
        // Commands are carried out whatever the conversation's status (opting out must always
        // work). Otherwise: a conversation handed to a human gets no bot reply (the turn is still
        // recorded as seen), and reactions, deletions, edits, notices and group chatter not
        // addressed to the bot are recorded, not answered.
        // The web widget shows the answer while it is written, and "typing…" until it is stored.
        let mut preview: Option<WidgetPreview> = None;
        let command = if turn.conversation_status == "closed" {
            None
        } else {
            commands::parse(&turn.kind, &turn.text)
        };
        let reply = if let Some(command) = command {
            let _typing = self.acknowledge(&turn);
            // A command that keeps failing must not hold the conversation either.
            let text = match commands::run(&self.store, &turn, &command).await {
                Ok(text) => text,
                Err(e) if give_up => {
                    warn!(error = %format!("{e:#}"), "command failed repeatedly; apologising");
                    APOLOGY.to_owned()
                }
                Err(e) => return Err(e),
            };
            counter!("switchboard_commands_total").increment(1);
            // A keyword the provider answers itself (Twilio's STOP/START/HELP) gets no second
            // answer from us (and one to an opted-out number would be refused anyway).
            if self.provider_answers(&turn).await {
                None
            } else {
                Some(ReplyDraft {
                    text,
                    citations_json: "[]".to_owned(),
                    grounding_json: None,
                })
            }
        } else if turn.conversation_status == "bot" && answerable {
            // Held until the answer is ready: Telegram's "typing…" shows if it takes a while,
            // renewed (it lasts 5 s).
            let _typing = self.acknowledge(&turn);
            preview = self.widget_preview(&turn);
            let question = Turn {
                tenant_id: turn.tenant_id.clone(),
                conversation_id: turn.conversation_id.clone(),
                message_id: turn.message_id.clone(),
                seq: turn.seq,
                channel: turn.channel_kind.clone(),
                text: turn.text.clone(),
            };
            // The preview shows whole sentences the outbound rules passed when a rule could stop
            // the answer (a blocked sentence never reaches it), and none at all when the
            // classifier judges whole answers.
            let screening = match (&preview, &self.moderation) {
                (Some(_), Some(moderation)) => match moderation.preview(&turn.tenant_id).await {
                    Ok(p) => p,
                    Err(e) if give_up => {
                        warn!(error = %format!("{e:#}"), "no policy for the preview; showing none");
                        crate::moderation::Preview::None
                    }
                    Err(e) => return Err(e),
                },
                _ => crate::moderation::Preview::Direct,
            };
            let answered = match (&preview, screening) {
                (Some(preview), crate::moderation::Preview::Screened(policy)) => {
                    let screen = crate::moderation::screen::Screen::new(preview, policy);
                    self.responder.respond_streaming(&question, &screen).await
                }
                (Some(preview), crate::moderation::Preview::Direct) => {
                    self.responder.respond_streaming(&question, preview).await
                }
                (Some(_), crate::moderation::Preview::None) | (None, _) => {
                    self.responder.respond(&question).await
                }
            };
            let answer = match answered {
                Ok(answer) => answer,
                Err(e) if give_up => {
                    warn!(error = %format!("{e:#}"), "no answer after repeated failures; apologising");
                    counter!("switchboard_processed_total", "outcome" => "apology").increment(1);
                    Answer {
                        trace: None,
                        grounding: None,
                        kind: crate::answer::AnswerKind::Fallback,
                        text: APOLOGY.to_owned(),
                        citations: Vec::new(),
                    }
                }
                Err(e) => return Err(e),
            };
            let mut draft = ReplyDraft {
                // NUL is not storable text on PostgreSQL; a responder must not be able to wedge
                // a conversation with it.
                text: answer.text.replace('\0', ""),
                citations_json: serde_json::to_string(&answer.citations)?,
                grounding_json: answer
                    .grounding
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()?,
            };
            // The hand-off policies on what kind of answer it was (no answer, fallbacks).
            if let Some(moderation) = &self.moderation {
                let ungrounded_handoff = answer
                    .grounding
                    .as_ref()
                    .is_some_and(|g| g.action == "handoff");
                match moderation
                    .after_answer(&turn, answer.kind, ungrounded_handoff)
                    .await
                {
                    Ok(Some(told)) => draft.text = format!("{}\n\n{told}", draft.text),
                    Ok(None) => {}
                    Err(e) if give_up => {
                        warn!(error = %format!("{e:#}"), "the hand-off policies failed repeatedly; answering without them");
                    }
                    Err(e) => return Err(e),
                }
            }
            // The answer is checked before it is stored: blocked → the safe fallback, held →
            // nothing until a moderator releases it.
            match &self.moderation {
                Some(moderation) => {
                    match moderation
                        .outbound(
                            &turn,
                            &draft.text,
                            &draft.citations_json,
                            answer.trace.as_deref(),
                        )
                        .await
                    {
                        Ok(Outbound::Send) => Some(draft),
                        Ok(Outbound::Replace(text)) => Some(ReplyDraft {
                            text,
                            citations_json: "[]".to_owned(),
                            grounding_json: None,
                        }),
                        Ok(Outbound::Hold) => None,
                        Err(e) if give_up => {
                            warn!(error = %format!("{e:#}"), "moderating the answer failed repeatedly; sending the safe fallback");
                            Some(ReplyDraft {
                                text: crate::moderation::Policy::default().safe_fallback,
                                citations_json: "[]".to_owned(),
                                grounding_json: None,
                            })
                        }
                        Err(e) => return Err(e),
                    }
                }
                None => Some(draft),
            }
        } else {
            None
        };
        let completed = self.complete(turn.clone(), reply).await?;
        if let Some(preview) = preview.as_mut() {
            // No reply stored (the conversation was closed meanwhile): the preview is withdrawn.
            preview.stored = completed.reply_id.is_some();
        }
        let outcome = if completed.reply_id.is_some() {
            self.wake_outbox_for(&completed);
            "replied"
        } else {
            "no_reply"
        };
        counter!("switchboard_processed_total", "outcome" => outcome).increment(1);
        histogram!("switchboard_turn_latency_seconds")
            .record((now_ms() - turn.created_at).max(0) as f64 / 1000.0);
        self.waiters.wake(&turn.message_id);
        Ok(())
    }
}

/// The preview of a widget answer while the turn runs. Dropped when the turn ends: the preview
/// is forgotten if the answer was stored (its message replaces it), withdrawn otherwise (the
/// turn failed and will run again); "typing…" stops either way.
struct WidgetPreview {
    hub: switchboard_channel_widget::Hub,
    visitor: String,
    stream_id: String,
    stored: bool,
}

impl crate::answer::Deltas for WidgetPreview {
    fn delta(&self, text: &str) {
        self.hub.stream_delta(&self.visitor, &self.stream_id, text);
    }

    fn reset(&self) {
        self.hub.stream_reset(&self.visitor, &self.stream_id);
    }
}

impl Drop for WidgetPreview {
    fn drop(&mut self) {
        if self.stored {
            self.hub.stream_end(&self.visitor, &self.stream_id);
        } else {
            self.hub.stream_reset(&self.visitor, &self.stream_id);
        }
        self.hub.typing(&self.visitor, false);
    }
}

impl Inner {
    /// A reply the delivery worker was not handed (something of its conversation goes first)
    /// waits for the worker's claim: wake it.
    fn wake_outbox_for(&self, completed: &Completed) {
        if completed.reply_id.is_some() && completed.claimed.is_none() {
            self.outbox_wake.notify_one();
        }
    }

    /// Whether the turn is a provider keyword (`opt_out`, `opt_in`, `help` messages) on a channel
    /// whose provider answers those itself.
    async fn provider_answers(&self, turn: &PendingTurn) -> bool {
        if !matches!(turn.kind.as_str(), "opt_out" | "opt_in" | "help") {
            return false;
        }
        let Some(channels) = &self.channels else {
            return false;
        };
        match self.store.channel_by_id(&turn.channel_id).await {
            Ok(channel) => channels
                .adapter(channel.kind)
                .is_some_and(|a| a.provider_answers_keywords(&channel.config)),
            Err(_) => false,
        }
    }

    /// For a widget turn the bot will answer: "typing…" on, and a preview to stream into.
    fn widget_preview(&self, turn: &PendingTurn) -> Option<WidgetPreview> {
        if turn.channel_kind != "widget" {
            return None;
        }
        let hub = self.channels.as_ref()?.widget().hub().clone();
        hub.typing(&turn.recipient, true);
        Some(WidgetPreview {
            hub,
            visitor: turn.recipient.clone(),
            stream_id: turn.message_id.clone(),
            stored: false,
        })
    }

    /// Tells the person the bot is on it — read receipt, a pressed button's spinner stopped,
    /// typing indicator — without delaying the answer: best effort, in the background, bounded.
    ///
    /// Returns a guard to hold while the answer is prepared: an indicator (Telegram's typing
    /// action) is shown only once the answer has taken a noticeable time, and renewed until the
    /// guard drops, for at most a minute (see [`Acknowledgement::Indicator`]).
    fn acknowledge(&self, turn: &PendingTurn) -> Option<tokio_util::sync::DropGuard> {
        let channels = self.channels.clone()?;
        let kind = ChannelKind::parse(&turn.channel_kind)?;
        let attachments: Vec<switchboard_channel::Attachment> =
            serde_json::from_str(&turn.attachments).unwrap_or_default();
        let (at_once, indicator) = match channels.adapter(kind)?.acknowledgement() {
            Acknowledgement::None => return None,
            Acknowledgement::Once => (true, None),
            Acknowledgement::Indicator { after, every } => {
                (!attachments.is_empty(), Some((after, every)))
            }
        };
        let store = self.store.clone();
        let channel_id = turn.channel_id.clone();
        let recipient = turn.recipient.clone();
        let provider_id = turn.provider_id.clone();
        let started = tokio::time::Instant::now();
        let done = CancellationToken::new();
        let answered = done.clone();
        self.tracker.spawn(async move {
            if at_once {
                let work = async {
                    let channel = store.channel_by_id(&channel_id).await?;
                    let Some(adapter) = channels.adapter(channel.kind) else {
                        return Ok(());
                    };
                    adapter
                        .acknowledge(
                            &channel.config,
                            &recipient,
                            provider_id.as_deref(),
                            &attachments,
                        )
                        .await
                };
                match tokio::time::timeout(Duration::from_secs(5), work).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %format!("{e:#}"), "acknowledging a turn failed")
                    }
                    Err(_) => tracing::debug!("acknowledging a turn timed out"),
                }
            }
            let Some((after, every)) = indicator else {
                return;
            };
            // Shown at `after`, then renewed at `every`, 2·`every`, … from the start, for at
            // most a minute.
            let end = started + Duration::from_secs(60);
            let every = every.max(Duration::from_millis(100));
            let mut at = started + after;
            let mut k = 1u32;
            while at < end {
                tokio::select! {
                    _ = answered.cancelled() => return,
                    _ = tokio::time::sleep_until(at) => {}
                }
                let show = async {
                    let channel = store.channel_by_id(&channel_id).await?;
                    let Some(adapter) = channels.adapter(channel.kind) else {
                        return Ok(());
                    };
                    adapter.indicate(&channel.config, &recipient).await
                };
                match tokio::time::timeout(every, show).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %format!("{e:#}"), "showing typing failed")
                    }
                    Err(_) => return,
                }
                while started + every * k <= at {
                    k += 1;
                }
                at = started + every * k;
            }
        });
        Some(done.drop_guard())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts/removes).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Callers waiting for a turn to complete (`POST /v1/messages` with `wait: true`).
#[derive(Default)]
struct Waiters {
    by_message: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
}

struct Registration<'a> {
    waiters: &'a Waiters,
    message_id: String,
    notify: Arc<Notify>,
}

impl Waiters {
    fn register(&self, message_id: &str) -> Registration<'_> {
        let mut map = lock(&self.by_message);
        let entry = map
            .entry(message_id.to_owned())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Registration {
            waiters: self,
            message_id: message_id.to_owned(),
            notify: entry.0.clone(),
        }
    }

    fn wake(&self, message_id: &str) {
        if let Some((notify, _)) = lock(&self.by_message).get(message_id) {
            notify.notify_waiters();
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.waiters.by_message);
        if let Some(entry) = map.get_mut(&self.message_id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.message_id);
            }
        }
    }
}
