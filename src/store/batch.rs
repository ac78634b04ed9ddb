//! Group commit: many callers' writes in one transaction.
//!
//! A [`Batcher`] owns one task. Callers `submit` an item and wait; the task takes every item
//! waiting at that moment (up to a maximum), runs them in one transaction, and answers each caller
//! only after that transaction committed. Under load, batches grow by themselves and one commit
//! (one fsync) serves many messages; with a single caller a batch is one item and nothing waits.
//! Nothing is acknowledged before it is durable.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

type Reply<O> = oneshot::Sender<Result<O, sqlx::Error>>;

/// Hands items to a task that writes them in batches. Cheap to clone.
pub struct Batcher<I, O> {
    tx: mpsc::UnboundedSender<(I, Reply<O>)>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Spawns `workers` batching tasks sharing one queue. `run` gets the items of one batch, in
    /// submission order, and returns one result per item, in the same order. The tasks end when
    /// every handle is gone. Several workers let a database that runs transactions concurrently
    /// (PostgreSQL) overlap batches; SQLite, with its one writer, wants one.
    pub fn spawn<F, Fut>(workers: usize, max_batch: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<O, sqlx::Error>>> + Send,
    {
        let (tx, rx) = mpsc::unbounded_channel::<(I, Reply<O>)>();
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        let run = std::sync::Arc::new(run);
        for _ in 0..workers.max(1) {
            let rx = rx.clone();
            let run = run.clone();
            tokio::spawn(async move {
                loop {
                    let items = {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else { return };
                        // Let the tasks that are ready to run (requests being parsed, turns being
                        // answered) queue their items first: on a busy core that makes the batch —
                        // and so what each commit and fsync serves — larger, at no cost when idle.
                        tokio::task::yield_now().await;
                        let mut items = vec![first];
                        while items.len() < max_batch {
                            match rx.try_recv() {
                                Ok(item) => items.push(item),
                                Err(_) => break,
                            }
                        }
                        items
                    };
                    let (inputs, replies): (Vec<I>, Vec<Reply<O>>) = items.into_iter().unzip();
                    let mut results = run(inputs).await.into_iter();
                    for reply in replies {
                        let result = results.next().unwrap_or(Err(sqlx::Error::Protocol(
                            "batch returned too few results".into(),
                        )));
                        let _ = reply.send(result);
                    }
                }
            });
        }
        Batcher { tx }
    }

    /// Submits one item and waits until its batch has committed (or failed).
    pub async fn submit(&self, item: I) -> Result<O, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((item, reply))
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

/// Runs `all` (one transaction for every item); if that fails and there was more than one item,
/// runs each item alone, so one bad item cannot fail the others.
pub async fn all_or_each<I, O, F, Fut>(items: Vec<I>, all: F) -> Vec<Result<O, sqlx::Error>>
where
    I: Clone,
    F: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = Result<Vec<O>, sqlx::Error>>,
{
    let n = items.len();
    match all(items.clone()).await {
        Ok(outputs) => outputs.into_iter().map(Ok).collect(),
        Err(e) if n <= 1 && !is_conflict(&e) => vec![Err(e)],
        Err(e) => {
            tracing::warn!(error = %e, items = n, "batch failed; writing its items one by one");
            let mut results = Vec::with_capacity(n);
            for item in items {
                let mut tries = 0;
                let result = loop {
                    tries += 1;
                    match all(vec![item.clone()]).await {
                        // A deadlock victim or serialization failure is worth another go.
                        Err(e) if tries < 3 && is_conflict(&e) => continue,
                        other => break other,
                    }
                };
                results.push(result.and_then(|mut v| v.pop().ok_or(sqlx::Error::RowNotFound)));
            }
            results
        }
    }
}

/// PostgreSQL's "deadlock detected" (40P01) and "serialization failure" (40001): the
/// transaction was chosen as a victim and can simply run again.
pub fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_submissions_share_batches_and_each_gets_its_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counter = batches.clone();
        let batcher = Batcher::spawn(2, 64, move |items: Vec<u32>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                items.into_iter().map(|i| Ok(i * 2)).collect()
            }
        });
        let answers = futures::future::join_all((0..100u32).map(|i| {
            let b = batcher.clone();
            async move { b.submit(i).await.ok() }
        }))
        .await;
        assert_eq!(
            answers,
            (0..100u32).map(|i| Some(i * 2)).collect::<Vec<_>>()
        );
        assert!(batches.load(Ordering::SeqCst) < 100, "items were batched");
    }

    #[tokio::test]
    async fn a_failing_batch_is_retried_item_by_item() {
        let results = all_or_each(vec![1, 2, 3], |items: Vec<i32>| async move {
            if items.contains(&2) {
                Err(sqlx::Error::RowNotFound)
            } else {
                Ok(items)
            }
        })
        .await;
        assert!(matches!(results[0], Ok(1)));
        assert!(results[1].is_err());
        assert!(matches!(results[2], Ok(3)));
    }
}
