//! The outbox: durable delivery of replies with retries and dead letters.
//!
//! Where it sits: last step before the provider. The router wrote each reply and its `delivery`
//! row in one transaction; this worker claims due rows (a lease, `FOR UPDATE SKIP LOCKED` on
//! Postgres), sends them through their channel outside any transaction, and records the outcome:
//! delivered; a retry at `now + back-off` (exponential with jitter, or the provider's
//! retry-after); or, after `max_attempts` or a permanent error, a dead letter — visible through
//! `GET /v1/deliveries?status=dead` and `switchboard_dead_letters_total`, never dropped.
//!
//! The worker is "a table plus a step function": [`Outbox::try_execute_step`] claims and sends
//! one batch, so tests (and the proactive scheduler later) can drive it deterministically; [`Outbox::run`]
//! loops it, waking on a [`Notify`] from the router or at the next due time, and after recorded
//! outcomes that may have made something due.
//!
//! Exactly-once: a crash after the provider accepted a message and before we recorded it means
//! one resend after the lease runs out; every send carries the delivery id as the provider's
//! idempotency key where the provider has one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use metrics::{counter, histogram};
use rand::Rng;
use switchboard_channel::{Content, OutboundMessage, SendError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::config::OutboxConfig;
use crate::pacer::Pacer;
pub use crate::registry::Channels;
use crate::registry::SendContext;
use crate::store::deliveries::{ClaimedDelivery, Outcome};
use crate::store::{Store, now_ms};

/// Shortest sleep of an idle worker, in milliseconds.
const MIN_IDLE_MS: i64 = 5;

/// An attempt ready to be recorded (with the permit it holds, if the worker loop gave it one).
type Recorded = (
    ClaimedDelivery,
    Outcome,
    &'static str,
    Option<OwnedSemaphorePermit>,
);

fn outcomes_of(batch: &[Recorded]) -> Vec<(ClaimedDelivery, Outcome)> {
    batch
        .iter()
        .map(|(d, o, _, _)| (d.clone(), o.clone()))
        .collect()
}

/// Metrics for a recorded batch; dropping it releases the permits.
fn count(batch: Vec<Recorded>) {
    for (d, outcome, channel, _permit) in batch {
        match outcome {
            Outcome::Delivered { .. } => {
                counter!("switchboard_delivered_total", "channel" => channel).increment(1);
                histogram!("switchboard_delivery_latency_seconds")
                    .record((now_ms() - d.created_at).max(0) as f64 / 1000.0);
            }
            Outcome::RetryAt { .. } => {
                counter!("switchboard_delivery_retries_total", "channel" => channel).increment(1);
            }
            Outcome::Dead { .. } => {
                counter!("switchboard_dead_letters_total", "channel" => channel).increment(1);
            }
            Outcome::Defer { .. } => {
                counter!("switchboard_delivery_paced_total", "channel" => channel).increment(1);
            }
        }
    }
}

/// When to try again after a failed attempt.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// Delay before the attempt after `attempts` failed ones: `base · 2^(attempts-1)` capped at
    /// `max`, with "equal jitter" (half fixed, half random) so retries of many deliveries spread
    /// out. A provider's retry-after replaces it, capped at `max` too: a provider asking for a
    /// year must not park a conversation's replies for a year (the attempt still counts, so the
    /// delivery ends as a visible dead letter if the provider keeps refusing).
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(30)))
            .min(self.max);
        let half = exp / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        let backoff = half + Duration::from_millis(jitter);
        retry_after.map_or(backoff, |wait| wait.min(self.max))
    }
}

impl From<&OutboxConfig> for RetryPolicy {
    fn from(c: &OutboxConfig) -> Self {
        RetryPolicy {
            base: Duration::from_millis(c.base_delay_ms),
            max: Duration::from_millis(c.max_delay_ms),
            max_attempts: c.max_attempts,
        }
    }
}

/// The worker loop's looks for due deliveries, as the recorder sees them.
#[derive(Default)]
struct Looking {
    /// How many looks the loop has started.
    started: AtomicU64,
    /// Whether the loop's last look found no free send slot (it then sleeps for the poll
    /// interval: recorded outcomes free slots, so the recorder wakes it).
    starved: AtomicBool,
}

/// The delivery worker.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    channels: Channels,
    policy: RetryPolicy,
    config: OutboxConfig,
    wake: Arc<Notify>,
    pacer: Arc<Pacer>,
    handoff_tx: mpsc::UnboundedSender<Vec<ClaimedDelivery>>,
    /// What the recorder needs to know of the worker loop (see [`Outbox::record_loop`]).
    looking: Arc<Looking>,
    /// Taken by [`Outbox::run`].
    handoff_rx: Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<Vec<ClaimedDelivery>>>>>,
}

/// Hands deliveries claimed elsewhere (the router claims a reply's delivery in the transaction
/// that stores it) to the running worker, in memory: no poll, no claim transaction of its own.
/// The claim is in the database, so a hand-off lost to a crash is sent after its lease.
#[derive(Clone)]
pub struct Handoff {
    tx: mpsc::UnboundedSender<Vec<ClaimedDelivery>>,
    lease_ms: i64,
}

impl Handoff {
    /// How long a claim made for the worker lasts.
    pub fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    pub fn send(&self, claimed: Vec<ClaimedDelivery>) {
        if !claimed.is_empty() {
            // The worker is gone (shutting down): the leases run out and the deliveries are
            // claimed again after the restart.
            let _ = self.tx.send(claimed);
        }
    }
}

/// Longest pacing wait slept inside an attempt; longer ones defer the delivery instead.
const MAX_PACING_SLEEP: Duration = Duration::from_secs(2);

/// An attempt's result, with the permit it held (released once the outcome is recorded, so the
/// worker never has more deliveries claimed than it can send).
type Attempted = (ClaimedDelivery, Outcome, &'static str, OwnedSemaphorePermit);

impl Outbox {
    pub fn new(
        store: Store,
        channels: Channels,
        config: &OutboxConfig,
        wake: Arc<Notify>,
    ) -> Outbox {
        let (handoff_tx, handoff_rx) = mpsc::unbounded_channel();
        Outbox {
            store,
            channels,
            policy: RetryPolicy::from(config),
            config: config.clone(),
            wake,
            pacer: Arc::new(Pacer::default()),
            handoff_tx,
            looking: Arc::default(),
            handoff_rx: Arc::new(std::sync::Mutex::new(Some(handoff_rx))),
        }
    }

    /// Where deliveries claimed for this worker are handed over (see [`Handoff`]).
    pub fn handoff(&self) -> Handoff {
        Handoff {
            tx: self.handoff_tx.clone(),
            lease_ms: self.config.lease_ms as i64,
        }
    }

    /// Claims one batch of due deliveries, sends them concurrently and records the outcomes.
    /// Returns how many were attempted.
    pub async fn try_execute_step(&self) -> anyhow::Result<usize> {
        let claimed = self
            .store
            .claim_due_deliveries(self.config.concurrency as i64, self.config.lease_ms as i64)
            .await?;
        let n = claimed.len();
        let attempts = claimed.into_iter().map(|d| async move {
            let (outcome, channel) = self.attempt(&d).await;
            (d, outcome, channel)
        });
        let results = futures::future::join_all(attempts).await;
        self.record(
            results
                .into_iter()
                .map(|(d, o, c)| (d, o, c, None))
                .collect(),
        )
        .await?;
        Ok(n)
    }

    /// Runs until `shutdown`, then lets the sends in flight finish and records them.
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let in_flight = TaskTracker::new();
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Attempted>();
        let recorder = tokio::spawn(self.clone().record_loop(done_rx));
        let poll = Duration::from_millis(self.config.poll_ms.max(1));
        let handoff = self
            .handoff_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // Deliveries claimed by the router, sent as they come, each with a permit.
        let handed = handoff.map(|mut handoff| {
            let (this, permits, in_flight, done) = (
                self.clone(),
                permits.clone(),
                in_flight.clone(),
                done_tx.clone(),
            );
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                while let Some(batch) = tokio::select! {
                    batch = handoff.recv() => batch,
                    _ = shutdown.cancelled() => None,
                } {
                    for d in batch {
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            return;
                        };
                        this.dispatch(&in_flight, &done, d, permit);
                    }
                }
                // Claimed but not started: give them back (without spending an attempt) so they
                // go at once after a restart, not when their lease runs out.
                handoff.close();
                let mut left = Vec::new();
                while let Ok(batch) = handoff.try_recv() {
                    left.extend(batch.into_iter().map(|d| {
                        let outcome = Outcome::Defer {
                            next_attempt_at: now_ms(),
                        };
                        (d, outcome)
                    }));
                }
                if !left.is_empty()
                    && let Err(e) = this.store.record_outcomes(&left).await
                {
                    warn!(error = %e, "releasing handed-over deliveries failed; their leases will run out");
                }
            })
        });
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let free = permits.available_permits();
            self.looking.started.fetch_add(1, Ordering::SeqCst);
            self.looking.starved.store(free == 0, Ordering::SeqCst);
            let mut claimed = 0;
            // Only when something is due: a woken worker whose rows the router already claimed
            // (or nothing at all) asks one read, not a write transaction.
            let due = if free > 0 {
                match self.store.next_delivery_due().await {
                    Ok(due) => due,
                    Err(e) => {
                        warn!(error = %e, "looking for due deliveries failed");
                        None
                    }
                }
            } else {
                None
            };
            if free > 0 && due.is_some_and(|due| due <= now_ms()) {
                match self
                    .store
                    .claim_due_deliveries(free as i64, self.config.lease_ms as i64)
                    .await
                {
                    Ok(batch) => {
                        claimed = batch.len();
                        for d in batch {
                            // We claimed at most `free`, but the hand-over task may have taken
                            // permits while the claim ran: wait for one rather than leave a
                            // claimed row unsent until its lease runs out.
                            let Ok(permit) = permits.clone().acquire_owned().await else {
                                break; // the semaphore is never closed
                            };
                            self.dispatch(&in_flight, &done_tx, d, permit);
                        }
                    }
                    Err(e) => warn!(error = %e, "claiming deliveries failed"),
                }
                if claimed == free {
                    continue; // there may be more due right now
                }
            }
            // Nothing (more) due: sleep until the next due time, a wake-up, or the poll interval.
            // (At least a few milliseconds: a due row that could not be claimed — locked by
            // another process — must not turn this loop into a spin.)
            let sleep_for = match due {
                Some(due) if claimed == 0 && free > 0 => Duration::from_millis(
                    (due - now_ms()).clamp(MIN_IDLE_MS, poll.as_millis() as i64) as u64,
                ),
                _ => poll,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep_for) => {}
            }
        }
        if let Some(handed) = handed {
            let _ = handed.await;
        }
        in_flight.close();
        in_flight.wait().await;
        drop(done_tx);
        let _ = recorder.await;
    }

    /// Starts one claimed delivery's attempt; its outcome goes to the recorder.
    fn dispatch(
        &self,
        in_flight: &TaskTracker,
        done: &mpsc::UnboundedSender<Attempted>,
        d: ClaimedDelivery,
        permit: OwnedSemaphorePermit,
    ) {
        let this = self.clone();
        let done = done.clone();
        let span = info_span!("delivery", delivery = %d.id, conversation = %d.conversation_id);
        in_flight.spawn(
            async move {
                // Boxed: the attempt's future (a channel's send) is ~3 KB, and the task
                // holding it is copied whole when spawned, once per delivery.
                let (outcome, channel) = Box::pin(this.attempt(&d)).await;
                let _ = done.send((d, outcome, channel, permit));
            }
            .instrument(span),
        );
    }

    /// Records finished attempts, as many as are ready at once in one transaction, and wakes the
    /// worker loop when that may have made something due: a retry's new time, a dead letter or a
    /// delivered reply whose successor waits (the store tells), slots freed for a loop that found
    /// none, or a look the loop took while this batch was being recorded — it could not see the
    /// batch's commit, and a wake-up it acted on then (a reply that could not be handed over
    /// because its predecessor was in this batch) would otherwise wait for the poll interval.
    /// Waking after every batch cost PostgreSQL a scan of the pending deliveries per batch.
    async fn record_loop(self, mut done: mpsc::UnboundedReceiver<Attempted>) {
        while let Some(first) = done.recv().await {
            // As in `Batcher`: the sends finishing right now join this batch.
            tokio::task::yield_now().await;
            let mut batch = vec![first];
            while batch.len() < 512 {
                match done.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            let batch = batch
                .into_iter()
                .map(|(d, o, c, permit)| (d, o, c, Some(permit)))
                .collect();
            let looks = self.looking.started.load(Ordering::SeqCst);
            let more = self.record_with_retries(batch).await;
            if more
                || self.looking.starved.load(Ordering::SeqCst)
                || self.looking.started.load(Ordering::SeqCst) != looks
            {
                self.wake.notify_one();
            }
        }
    }

    /// Records a batch, retrying a failed write a few times: a lost "delivered" would mean a
    /// second send once the lease runs out. If it still fails, the leases do run out and those
    /// deliveries are attempted again (with their idempotency keys). Returns whether a delivery
    /// may have become due (see [`Store::record_outcomes`]; `true` when recording failed).
    async fn record_with_retries(&self, batch: Vec<Recorded>) -> bool {
        let mut pause = Duration::from_millis(50);
        for attempt in 1..=5 {
            match self.store.record_outcomes(&outcomes_of(&batch)).await {
                Ok(more) => {
                    count(batch);
                    return more;
                }
                Err(e) => {
                    warn!(error = %e, attempt, "recording delivery outcomes failed");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        true
    }

    async fn record(&self, batch: Vec<Recorded>) -> anyhow::Result<()> {
        self.store.record_outcomes(&outcomes_of(&batch)).await?;
        count(batch);
        Ok(())
    }

    /// Sends one claimed delivery; decides what should become of it. Writes nothing.
    async fn attempt(&self, d: &ClaimedDelivery) -> (Outcome, &'static str) {
        let channel = match self.store.channel_by_id(&d.channel_id).await {
            Ok(channel) if channel.removed => {
                let error = "the channel was removed (DELETE /v1/channels/{id}); nothing is sent through it".to_owned();
                return (Outcome::Dead { error }, channel.kind.as_str());
            }
            Ok(channel) => channel,
            Err(e) => {
                // The database is unreachable or the channel is gone: try again later.
                let delay = self.policy.delay(d.attempts as u32, None);
                let error = format!("loading channel: {e}");
                return (self.retry_or_dead(d, delay, error), "unknown");
            }
        };
        let Some(adapter) = self.channels.adapter(channel.kind) else {
            let error = format!(
                "the {} channel is not available in this build",
                channel.kind
            );
            return (Outcome::Dead { error }, channel.kind.as_str());
        };
        // Read with the claim; only channels with window rules are told.
        let contact_last_wrote_at = if adapter.needs_last_inbound() {
            d.last_inbound_at
        } else {
            None
        };
        // A contact who blocked the bot (or bounced) gets nothing; the reason is visible on the
        // dead letter.
        // (Read with the claim.)
        if adapter.tracks_reachability()
            && let Some(reason) = &d.unreachable
        {
            let error = format!("contact unreachable: {reason}");
            return (Outcome::Dead { error }, channel.kind.as_str());
        }
        let mut context = SendContext::default();
        if adapter.threads() {
            match self
                .store
                .thread_info(&d.conversation_id, &d.message_id)
                .await
            {
                Ok((thread, proactive)) => {
                    context.thread = Some(thread);
                    context.proactive = proactive;
                }
                Err(e) => {
                    let delay = self.policy.delay(d.attempts as u32, None);
                    let error = format!("loading the conversation's thread: {e}");
                    return (self.retry_or_dead(d, delay, error), channel.kind.as_str());
                }
            }
        }
        let content = match d.content.as_deref().map(serde_json::from_str::<Content>) {
            None => Content::default(),
            Some(Ok(content)) => content,
            Some(Err(e)) => {
                let error = format!("stored content is not readable: {e}");
                return (Outcome::Dead { error }, channel.kind.as_str());
            }
        };
        let msg = OutboundMessage {
            delivery_id: d.id.clone(),
            conversation_id: d.conversation_id.clone(),
            message_id: d.message_id.clone(),
            seq: d.seq,
            to: d.recipient.clone(),
            text: d.body.clone(),
            content,
            parts_sent: u32::try_from(d.parts_sent).unwrap_or(0),
            progress: Default::default(),
            contact_last_wrote_at,
        };
        // The provider's rate limits: a short wait is slept, a long one defers without spending
        // an attempt (the pacer books nothing then).
        let limits = if self.config.pacing {
            adapter.limits(&channel, &d.recipient)
        } else {
            Vec::new()
        };
        // The sleep must leave the send its whole timeout inside the lease.
        let max_sleep = MAX_PACING_SLEEP.min(Duration::from_millis(
            self.config
                .lease_ms
                .saturating_sub(self.config.send_timeout_ms)
                / 2,
        ));
        match self.pacer.reserve(&limits, max_sleep) {
            Some(wait) if wait.is_zero() => {}
            Some(wait) => tokio::time::sleep(wait).await,
            None => {
                let next_attempt_at = now_ms() + max_sleep.as_millis().max(50) as i64;
                return (Outcome::Defer { next_attempt_at }, channel.kind.as_str());
            }
        }
        let timeout = Duration::from_millis(self.config.send_timeout_ms);
        let sent = match tokio::time::timeout(timeout, adapter.send(&channel, &msg, &context)).await
        {
            Ok(result) => result,
            Err(_) => Err(SendError::Transient(format!(
                "send timed out after {timeout:?}"
            ))),
        };
        // Every part a provider accepted beyond the first counts against its rate too.
        let parts = msg.progress.get().saturating_sub(msg.parts_sent);
        if self.config.pacing && parts > 1 {
            self.pacer.charge(&limits, parts - 1);
        }
        let outcome = match sent {
            Ok(receipt) => Outcome::Delivered {
                provider_message_id: receipt.provider_message_id,
            },
            Err(e) if e.is_retryable() => {
                let (reported, cause) = match &e {
                    SendError::Partial { parts_sent, error } => (*parts_sent, error.as_ref()),
                    other => (0, other),
                };
                // How far the message got, whether the adapter said so or we stopped waiting.
                let parts_sent =
                    Some(i64::from(reported.max(msg.progress.get()))).filter(|&p| p > d.parts_sent);
                let retry_after = match cause {
                    SendError::RetryAfter(wait, _) => Some(*wait),
                    _ => None,
                };
                // The provider's flood wait holds every send under the same limits, not just
                // this one.
                if let Some(wait) = retry_after
                    && self.config.pacing
                {
                    self.pacer.hold(&limits, wait);
                }
                let delay = self.policy.delay(d.attempts as u32, retry_after);
                match self.retry_or_dead(d, delay, e.to_string()) {
                    Outcome::RetryAt {
                        next_attempt_at,
                        error,
                        ..
                    } => Outcome::RetryAt {
                        next_attempt_at,
                        error,
                        parts_sent,
                    },
                    dead => dead,
                }
            }
            Err(e) => {
                warn!(attempts = d.attempts, error = %e, "delivery refused for good; dead letter");
                // What the provider said about the recipient holds for later sends too.
                let cause = match &e {
                    SendError::Partial { error, .. } => error.as_ref(),
                    other => other,
                };
                let marked = match cause {
                    SendError::Unreachable(reason) => {
                        self.store
                            .set_reachability(&channel, &d.recipient, false, reason, None)
                            .await
                    }
                    SendError::OptedOut(reason) => {
                        self.store
                            .set_subscription(&channel, &d.recipient, false, reason)
                            .await
                    }
                    _ => Ok(()),
                };
                if let Err(store_error) = marked {
                    warn!(error = %store_error, "recording what the provider said about the recipient failed");
                }
                Outcome::Dead {
                    error: e.to_string(),
                }
            }
        };
        (outcome, channel.kind.as_str())
    }

    fn retry_or_dead(&self, d: &ClaimedDelivery, delay: Duration, error: String) -> Outcome {
        if d.attempts < i64::from(self.policy.max_attempts) {
            warn!(attempts = d.attempts, ?delay, %error, "delivery failed; will retry");
            Outcome::RetryAt {
                next_attempt_at: now_ms()
                    .saturating_add(delay.as_millis().min(i64::MAX as u128) as i64),
                error,
                parts_sent: None,
            }
        } else {
            warn!(attempts = d.attempts, %error, "delivery failed too often; dead letter");
            Outcome::Dead { error }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_grows_exponentially_with_jitter_and_is_capped() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_attempts: 10,
        };
        for _ in 0..200 {
            let d1 = p.delay(1, None);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = p.delay(3, None);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            let d20 = p.delay(20, None);
            assert!(
                d20 >= Duration::from_secs(1) && d20 <= Duration::from_secs(2),
                "{d20:?}"
            );
        }
    }

    #[test]
    fn a_provider_retry_after_is_honoured() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_attempts: 10,
        };
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(1500))),
            Duration::from_millis(1500)
        );
        // …but never beyond the cap, however long the provider asks for.
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3_000_000_000))),
            Duration::from_secs(2)
        );
    }
}
