//! What stands between conversations and a model server: a concurrency limit with a queue, time
//! limits, and a circuit breaker.
//!
//! - **Concurrency**: at most `concurrency` generations at once (a local model serves one or two
//!   well; more only slows all of them). Others wait in line; the wait counts toward the
//!   first-token limit, so a long queue ends in the fallback answer, not a hang.
//! - **Time**: no first piece of text within `first_token` (queue included), or no complete
//!   answer within `total` → [`LlmError::Timeout`].
//! - **Circuit breaker**: after `failure_threshold` outage-like failures in a row (unreachable,
//!   5xx, timeouts, broken streams) the breaker opens and calls fail at once for `cool_down`;
//!   then one call is let through (half-open): success closes it, failure opens it again. An
//!   outage costs each conversation nothing but the fallback.
//!
//! Metrics: `switchboard_llm_waiting` and `switchboard_llm_in_flight` (gauges),
//! `switchboard_llm_queue_seconds`, `switchboard_llm_first_token_seconds` (histograms),
//! `switchboard_llm_requests_total{outcome}`, `switchboard_llm_circuit_open` (gauge, 0/1).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use tokio::sync::Semaphore;

use super::{ChatModel, ChatRequest, Generated, LlmError, OnDelta};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub concurrency: usize,
    pub first_token: Duration,
    pub total: Duration,
    pub failure_threshold: u32,
    pub cool_down: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrency: 2,
            first_token: Duration::from_secs(15),
            total: Duration::from_secs(60),
            failure_threshold: 3,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// The breaker's state, as shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// A half-open trial call is running.
    trial: bool,
}

/// A chat model behind the limits.
pub struct Guarded {
    model: Box<dyn ChatModel>,
    limits: Limits,
    permits: Semaphore,
    breaker: Mutex<Breaker>,
}

/// Records a time to first token once, and tells whether text has started.
struct Watch<'a> {
    inner: &'a mut dyn OnDelta,
    started: &'a AtomicBool,
    since: Instant,
}

impl OnDelta for Watch<'_> {
    fn delta(&mut self, text: &str) {
        if !self.started.swap(true, Ordering::Relaxed) {
            histogram!("switchboard_llm_first_token_seconds")
                .record(self.since.elapsed().as_secs_f64());
        }
        self.inner.delta(text);
    }
}

impl Guarded {
    pub fn new(model: Box<dyn ChatModel>, limits: Limits) -> Guarded {
        Guarded {
            model,
            permits: Semaphore::new(limits.concurrency.max(1)),
            limits,
            breaker: Mutex::new(Breaker {
                failures: 0,
                open_until: None,
                trial: false,
            }),
        }
    }

    pub fn model(&self) -> &dyn ChatModel {
        self.model.as_ref()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn circuit(&self) -> Circuit {
        let breaker = self.lock();
        match breaker.open_until {
            None => Circuit::Closed,
            Some(until) if Instant::now() < until => Circuit::Open,
            Some(_) => Circuit::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the breaker now (the server did not answer a health check): conversations get the
    /// fallback at once, and a call is tried again after the cool-down.
    pub fn trip(&self) {
        let mut breaker = self.lock();
        breaker.failures = self.limits.failure_threshold;
        breaker.open_until = Some(Instant::now() + self.limits.cool_down);
        gauge!("switchboard_llm_circuit_open").set(1.0);
    }

    /// May a call go to the server now? Marks the half-open trial as taken.
    fn admit(&self) -> Result<bool, LlmError> {
        let mut breaker = self.lock();
        match breaker.open_until {
            None => Ok(false),
            Some(until) if Instant::now() < until => Err(LlmError::Unavailable(
                "the circuit breaker is open after repeated failures",
            )),
            Some(_) if breaker.trial => Err(LlmError::Unavailable(
                "the circuit breaker is testing the server with another call",
            )),
            Some(_) => {
                breaker.trial = true;
                Ok(true)
            }
        }
    }

    fn record(&self, trial: bool, result: &Result<Generated, LlmError>) {
        let mut breaker = self.lock();
        if trial {
            breaker.trial = false;
        }
        match result {
            Ok(_) => {
                breaker.failures = 0;
                if breaker.open_until.take().is_some() {
                    tracing::info!("the language model answers again: circuit closed");
                }
            }
            Err(e) if e.is_outage() => {
                breaker.failures += 1;
                if trial || breaker.failures >= self.limits.failure_threshold {
                    if breaker.open_until.is_none() || trial {
                        tracing::warn!(
                            error = %e,
                            cool_down_ms = self.limits.cool_down.as_millis() as u64,
                            "the language model keeps failing: circuit open, answering from the fallback"
                        );
                    }
                    breaker.open_until = Some(Instant::now() + self.limits.cool_down);
                }
            }
            Err(_) => {}
        }
        gauge!("switchboard_llm_circuit_open").set(if breaker.open_until.is_some() {
            1.0
        } else {
            0.0
        });
    }

    /// Generates within the limits. The deltas reach `on_delta` as they arrive.
    pub async fn chat(
        &self,
        request: &ChatRequest,
        on_delta: &mut dyn OnDelta,
    ) -> Result<Generated, LlmError> {
        let result = self.chat_inner(request, on_delta).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(LlmError::Timeout(_)) => "timeout",
            Err(LlmError::Unavailable(_)) => "circuit_open",
            Err(LlmError::Unreachable(_)) => "unreachable",
            Err(_) => "error",
        };
        counter!("switchboard_llm_requests_total", "outcome" => outcome).increment(1);
        result
    }

    async fn chat_inner(
        &self,
        request: &ChatRequest,
        on_delta: &mut dyn OnDelta,
    ) -> Result<Generated, LlmError> {
        let since = Instant::now();
        let first_deadline = tokio::time::Instant::from_std(since + self.limits.first_token);
        let total_deadline = tokio::time::Instant::from_std(since + self.limits.total);
        // Fail fast while open, before queueing behind calls that will fail too.
        self.admit_peek()?;
        gauge!("switchboard_llm_waiting").increment(1.0);
        let permit = tokio::time::timeout_at(first_deadline, self.permits.acquire()).await;
        gauge!("switchboard_llm_waiting").decrement(1.0);
        histogram!("switchboard_llm_queue_seconds").record(since.elapsed().as_secs_f64());
        let _permit = match permit {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(LlmError::Unavailable("the model gate is closed")),
            // Waiting in line is not the server's failure: the breaker is not told.
            Err(_) => return Err(LlmError::Timeout(self.limits.first_token)),
        };
        let trial = self.admit()?;
        gauge!("switchboard_llm_in_flight").increment(1.0);
        let started = AtomicBool::new(false);
        let mut watch = Watch {
            inner: on_delta,
            started: &started,
            since,
        };
        let result = {
            let generation = self.model.chat(request, &mut watch);
            tokio::pin!(generation);
            let first = tokio::time::sleep_until(first_deadline);
            tokio::pin!(first);
            let mut first_pending = true;
            loop {
                tokio::select! {
                    result = &mut generation => break result,
                    _ = &mut first, if first_pending => {
                        first_pending = false;
                        if !started.load(Ordering::Relaxed) {
                            break Err(LlmError::Timeout(self.limits.first_token));
                        }
                    }
                    _ = tokio::time::sleep_until(total_deadline) => {
                        break Err(LlmError::Timeout(self.limits.total));
                    }
                }
            }
        };
        gauge!("switchboard_llm_in_flight").decrement(1.0);
        self.record(trial, &result);
        result
    }

    /// Refuses at once while the breaker is open (without taking the half-open trial).
    fn admit_peek(&self) -> Result<(), LlmError> {
        let breaker = self.lock();
        match breaker.open_until {
            Some(until) if Instant::now() < until => Err(LlmError::Unavailable(
                "the circuit breaker is open after repeated failures",
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ChatMessage, Role};
    use async_trait::async_trait;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    /// A model that fails, hangs or answers as told, counting its calls.
    struct Scripted {
        calls: Arc<AtomicUsize>,
        behaviour: Arc<Mutex<&'static str>>,
    }

    #[async_trait]
    impl ChatModel for Scripted {
        async fn chat(
            &self,
            _request: &ChatRequest,
            on_delta: &mut dyn OnDelta,
        ) -> Result<Generated, LlmError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let behaviour = *self.behaviour.lock().unwrap_or_else(|e| e.into_inner());
            match behaviour {
                "down" => Err(LlmError::Unreachable("connection refused".into())),
                "hang" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(LlmError::Truncated)
                }
                "slow_after_first" => {
                    on_delta.delta("Hel");
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(LlmError::Truncated)
                }
                "bad_request" => Err(LlmError::Status {
                    status: 400,
                    message: "bad".into(),
                }),
                _ => {
                    on_delta.delta("Hel");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    on_delta.delta("lo");
                    Ok(Generated {
                        text: "Hello".into(),
                        finish_reason: Some("stop".into()),
                        prompt_tokens: None,
                        completion_tokens: None,
                    })
                }
            }
        }

        async fn check(&self) -> Result<(), LlmError> {
            Ok(())
        }

        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    fn guarded(
        behaviour: &'static str,
        limits: Limits,
    ) -> (Arc<Guarded>, Arc<AtomicUsize>, Arc<Mutex<&'static str>>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let model = Scripted {
            calls: calls.clone(),
            behaviour: behaviour.clone(),
        };
        (
            Arc::new(Guarded::new(Box::new(model), limits)),
            calls,
            behaviour,
        )
    }

    fn request() -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::new(Role::User, "hi")],
            max_tokens: 16,
            temperature: 0.0,
            format: None,
        }
    }

    fn quick() -> Limits {
        Limits {
            concurrency: 1,
            first_token: Duration::from_millis(200),
            total: Duration::from_millis(500),
            failure_threshold: 2,
            cool_down: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn deltas_pass_through_and_add_up() {
        let (guard, _, _) = guarded("ok", quick());
        let mut seen = String::new();
        let generated = guard
            .chat(&request(), &mut |t: &str| seen.push_str(t))
            .await;
        assert_eq!(generated.ok().map(|g| g.text), Some("Hello".to_owned()));
        assert_eq!(seen, "Hello");
    }

    #[tokio::test]
    async fn no_first_token_in_time_and_no_end_in_time_are_timeouts() {
        let (guard, _, _) = guarded("hang", quick());
        let start = Instant::now();
        let r = guard.chat(&request(), &mut |_: &str| {}).await;
        assert!(matches!(r, Err(LlmError::Timeout(d)) if d == Duration::from_millis(200)));
        assert!(start.elapsed() < Duration::from_millis(450));
        let (guard, _, _) = guarded("slow_after_first", quick());
        let r = guard.chat(&request(), &mut |_: &str| {}).await;
        assert!(matches!(r, Err(LlmError::Timeout(d)) if d == Duration::from_millis(500)));
    }

    #[tokio::test]
    async fn the_breaker_opens_after_repeated_outages_then_lets_one_trial_through() {
        let (guard, calls, behaviour) = guarded("down", quick());
        for _ in 0..2 {
            assert!(matches!(
                guard.chat(&request(), &mut |_: &str| {}).await,
                Err(LlmError::Unreachable(_))
            ));
        }
        assert_eq!(guard.circuit(), Circuit::Open);
        // Open: refused at once, the server is not called.
        for _ in 0..5 {
            assert!(matches!(
                guard.chat(&request(), &mut |_: &str| {}).await,
                Err(LlmError::Unavailable(_))
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(320)).await;
        assert_eq!(guard.circuit(), Circuit::HalfOpen);
        // The trial fails: open again, one more call made.
        assert!(guard.chat(&request(), &mut |_: &str| {}).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(guard.circuit(), Circuit::Open);
        tokio::time::sleep(Duration::from_millis(320)).await;
        *behaviour.lock().unwrap_or_else(|e| e.into_inner()) = "ok";
        assert!(guard.chat(&request(), &mut |_: &str| {}).await.is_ok());
        assert_eq!(guard.circuit(), Circuit::Closed);
    }

    #[tokio::test]
    async fn refused_requests_do_not_open_the_breaker() {
        let (guard, _, _) = guarded("bad_request", quick());
        for _ in 0..5 {
            assert!(guard.chat(&request(), &mut |_: &str| {}).await.is_err());
        }
        assert_eq!(guard.circuit(), Circuit::Closed);
    }

    #[tokio::test]
    async fn callers_beyond_the_limit_queue_and_time_out_in_line() {
        // The first call streams slowly and holds the only slot past the second's limit.
        let (guard, calls, _) = guarded(
            "slow_after_first",
            Limits {
                first_token: Duration::from_millis(150),
                failure_threshold: 100,
                ..quick()
            },
        );
        let a = {
            let guard = guard.clone();
            tokio::spawn(async move { guard.chat(&request(), &mut |_: &str| {}).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The second waits behind the first (concurrency 1) and gives up in line.
        let b = guard.chat(&request(), &mut |_: &str| {}).await;
        assert!(matches!(b, Err(LlmError::Timeout(_))));
        assert!(matches!(a.await, Ok(Err(LlmError::Timeout(_)))));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the queued call never reached the model"
        );
    }
}
