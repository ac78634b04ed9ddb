//! One writer, one transaction per tick (SQLite).
//!
//! SQLite has one writer; before this, three group-commit queues took turns on it — inbound
//! messages, completed turns (replies with their deliveries) and delivery outcomes (and, beside
//! them, a transaction of its own for every widget acknowledgement, which now joins the tick
//! too) — and a busy
//! core paid three commits per round: three fsyncs, and the pages all of them touch (the
//! conversation rows, the message table's tail) written to the WAL three times. The [`Tick`]
//! takes whatever of the three is waiting when the writer comes free and commits it in one
//! transaction. Every caller is still answered only after the commit that holds its write:
//! nothing is acknowledged, handed to the delivery worker or counted as sent before it is
//! durable.
//!
//! If the combined transaction fails, each kind of work runs again on its own (and within a
//! kind, item by item, as before), so one bad message cannot fail a reply or an outcome.
//!
//! PostgreSQL keeps the separate queues: there several batches run at once on their own
//! connections, and one transaction mixing every kind would hold more row locks for longer.

use std::collections::BTreeMap;

use tracing::warn;

use super::batch::Batcher;
use super::deliveries::{ClaimedDelivery, Outcome};
use super::messages::{Completed, IngestItem, Ingested, PendingTurn, ReplyDraft};
use super::{Store, now_ms};

/// Most pieces of work (messages, turns, outcome lists) in one tick's transaction.
const MAX_TICK: usize = 512;

/// One caller's piece of a tick.
enum Op {
    Ingest(IngestItem),
    Complete {
        turn: PendingTurn,
        reply: Option<ReplyDraft>,
        lease_ms: Option<i64>,
    },
    Record(Vec<(ClaimedDelivery, Outcome)>),
    /// A widget visitor holds its conversation up to this seq (see [`Store::widget_ack`]).
    Ack {
        conversation_id: String,
        seq: i64,
    },
}

/// What a caller gets back once its tick committed.
enum Done {
    Ingested(Ingested),
    Completed(Box<Completed>),
    Recorded,
    Acked,
}

/// Handle to the tick writer. Cheap to clone.
#[derive(Clone)]
pub struct Tick {
    batcher: Batcher<Op, Done>,
}

impl Tick {
    /// Starts the writer task. `store` must be one without a tick of its own (its fallbacks run
    /// the direct paths).
    pub(super) fn spawn(store: Store) -> Tick {
        let batcher = Batcher::spawn(1, MAX_TICK, move |ops| {
            let store = store.clone();
            async move { run(&store, ops).await }
        });
        Tick { batcher }
    }

    /// Stores one inbound message (see [`Store::ingest_batch`]).
    pub async fn ingest(&self, item: IngestItem) -> Result<Ingested, sqlx::Error> {
        match self.batcher.submit(Op::Ingest(item)).await? {
            Done::Ingested(ingested) => Ok(ingested),
            _ => Err(mismatch()),
        }
    }

    /// Completes one turn (see [`Store::complete_turns`]).
    pub async fn complete(
        &self,
        turn: PendingTurn,
        reply: Option<ReplyDraft>,
        lease_ms: Option<i64>,
    ) -> Result<Completed, sqlx::Error> {
        let op = Op::Complete {
            turn,
            reply,
            lease_ms,
        };
        match self.batcher.submit(op).await? {
            Done::Completed(completed) => Ok(*completed),
            _ => Err(mismatch()),
        }
    }

    /// Marks what a widget visitor acknowledged delivered (see [`Store::widget_ack`]).
    pub async fn ack(&self, conversation_id: String, seq: i64) -> Result<(), sqlx::Error> {
        match self
            .batcher
            .submit(Op::Ack {
                conversation_id,
                seq,
            })
            .await?
        {
            Done::Acked => Ok(()),
            _ => Err(mismatch()),
        }
    }

    /// Records delivery outcomes (see [`Store::record_outcomes`]).
    pub async fn record(
        &self,
        outcomes: Vec<(ClaimedDelivery, Outcome)>,
    ) -> Result<(), sqlx::Error> {
        match self.batcher.submit(Op::Record(outcomes)).await? {
            Done::Recorded => Ok(()),
            _ => Err(mismatch()),
        }
    }
}

fn mismatch() -> sqlx::Error {
    sqlx::Error::Protocol("the tick writer answered with another kind of result".into())
}

/// Turns to complete, and where each one's result goes.
type TurnGroup = (Vec<(PendingTurn, Option<ReplyDraft>)>, Vec<usize>);

/// The work of one tick, sorted by kind; `at` says where each result goes.
#[derive(Default)]
struct Sorted {
    ingest: Vec<IngestItem>,
    ingest_at: Vec<usize>,
    /// Turns by the delivery lease their caller asked for (one group in practice).
    complete: BTreeMap<Option<i64>, TurnGroup>,
    record: Vec<(ClaimedDelivery, Outcome)>,
    /// Per `Record` op: its index and how many outcomes of `record` it brought.
    record_at: Vec<(usize, usize)>,
    /// Widget acknowledgements: (conversation, seq).
    ack: Vec<(String, i64)>,
    ack_at: Vec<usize>,
}

async fn run(store: &Store, ops: Vec<Op>) -> Vec<Result<Done, sqlx::Error>> {
    let n = ops.len();
    // How much each commit (and its fsync) serves: its count is the number of ticks.
    metrics::histogram!("switchboard_write_tick_items").record(n as f64);
    let mut sorted = Sorted::default();
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Ingest(item) => {
                sorted.ingest.push(item);
                sorted.ingest_at.push(i);
            }
            Op::Complete {
                turn,
                reply,
                lease_ms,
            } => {
                let (turns, at) = sorted.complete.entry(lease_ms).or_default();
                turns.push((turn, reply));
                at.push(i);
            }
            Op::Record(outcomes) => {
                sorted.record_at.push((i, outcomes.len()));
                sorted.record.extend(outcomes);
            }
            Op::Ack {
                conversation_id,
                seq,
            } => {
                sorted.ack.push((conversation_id, seq));
                sorted.ack_at.push(i);
            }
        }
    }
    let mut results: Vec<Option<Result<Done, sqlx::Error>>> = (0..n).map(|_| None).collect();
    match together(store, &sorted).await {
        Ok((ingested, completed)) => {
            for (at, ingested) in sorted.ingest_at.iter().zip(ingested) {
                results[*at] = Some(Ok(Done::Ingested(ingested)));
            }
            for ((_, at), completed) in sorted.complete.values().zip(completed) {
                for (at, completed) in at.iter().zip(completed) {
                    results[*at] = Some(Ok(Done::Completed(Box::new(completed))));
                }
            }
            for (at, _) in &sorted.record_at {
                results[*at] = Some(Ok(Done::Recorded));
            }
            for at in &sorted.ack_at {
                results[*at] = Some(Ok(Done::Acked));
            }
        }
        Err(e) => {
            warn!(error = %e, ops = n, "tick failed; writing its parts one by one");
            separately(store, sorted, &mut results).await;
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(mismatch())))
        .collect()
}

/// Everything in one transaction: outcomes first (a reply whose predecessor was just recorded
/// as delivered can then be claimed with its turn), then turns, then new messages, then the
/// widget's acknowledgements.
async fn together(
    store: &Store,
    sorted: &Sorted,
) -> Result<(Vec<Ingested>, Vec<Vec<Completed>>), sqlx::Error> {
    let now = now_ms();
    let mut w = store.begin_write().await?;
    if !sorted.record.is_empty() {
        store
            .record_outcomes_in(&mut w, &sorted.record, now)
            .await?;
    }
    let mut completed = Vec::with_capacity(sorted.complete.len());
    for (lease_ms, (turns, _)) in &sorted.complete {
        completed.push(store.complete_in(&mut w, turns, *lease_ms, now).await?);
    }
    let ingested = if sorted.ingest.is_empty() {
        Vec::new()
    } else {
        store.ingest_in(&mut w, &sorted.ingest, now).await?
    };
    if !sorted.ack.is_empty() {
        store.widget_acks_in(&mut w, &sorted.ack).await?;
    }
    w.commit().await?;
    Ok((ingested, completed))
}

/// After a failed tick: each kind on its own path, which isolates a failing item.
async fn separately(
    store: &Store,
    sorted: Sorted,
    results: &mut [Option<Result<Done, sqlx::Error>>],
) {
    let mut outcomes = sorted.record.into_iter();
    for (at, k) in sorted.record_at {
        let mine: Vec<_> = outcomes.by_ref().take(k).collect();
        // `store` has no tick: this is the direct path, its own transaction.
        results[at] = Some(store.record_outcomes(&mine).await.map(|_| Done::Recorded));
    }
    for (lease_ms, (turns, at)) in sorted.complete {
        for (at, r) in at
            .into_iter()
            .zip(store.complete_turns(turns, lease_ms).await)
        {
            results[at] = Some(r.map(|c| Done::Completed(Box::new(c))));
        }
    }
    for (at, (conversation_id, seq)) in sorted.ack_at.into_iter().zip(sorted.ack) {
        // `store` has no tick: its own transaction.
        results[at] = Some(
            store
                .widget_ack(&conversation_id, seq)
                .await
                .map(|()| Done::Acked),
        );
    }
    if !sorted.ingest.is_empty() {
        let ingested = store.ingest_batch(sorted.ingest).await;
        for (at, r) in sorted.ingest_at.into_iter().zip(ingested) {
            results[at] = Some(r.map(Done::Ingested));
        }
    }
}
