//! Pacing: provider send-rate limits, kept before the provider has to enforce them.
//!
//! Each limit is a GCRA ("virtual scheduling") cell per key: an emission interval and a burst
//! allowance. A send that involves several keys (one chat and the whole bot, say) starts when all
//! of them allow it, and is booked on all of them. The outbox asks for a start time before each
//! send: a short wait is slept; a long one defers the delivery without spending an attempt, so
//! one busy chat never holds a worker.
//!
//! Limits (providers' published guidance):
//! - Telegram: about 1 message/s per chat, 20/min per group, 30/s per bot.
//! - WhatsApp Cloud API: 80 messages/s per business number (the default throughput).
//! - SMS (Twilio): 1 message/s per long code by default; the channel's `mps` for toll-free
//!   numbers, short codes and Messaging Services.
//!
//! Which limits a send falls under is the channel's adapter's to say (`registry.rs`).
//!
//! The state is per process and forgets idle keys; several gateways on one database each keep
//! their own (the provider's 429 + retry-after then takes over, which the outbox honours).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One rate: `per` / `count`, with `burst` sends allowed back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

impl Rate {
    const fn new(count: u32, per: Duration, burst: u32) -> Rate {
        Rate { count, per, burst }
    }

    fn interval(self) -> Duration {
        self.per / self.count.max(1)
    }

    fn tolerance(self) -> Duration {
        self.interval() * self.burst.saturating_sub(1)
    }
}

pub const TELEGRAM_PER_CHAT: Rate = Rate::new(1, Duration::from_secs(1), 3);
pub const TELEGRAM_PER_GROUP: Rate = Rate::new(20, Duration::from_secs(60), 3);
pub const TELEGRAM_PER_BOT: Rate = Rate::new(30, Duration::from_secs(1), 30);
pub const WHATSAPP_PER_NUMBER: Rate = Rate::new(80, Duration::from_secs(1), 80);

/// The limits a Telegram send to `recipient` falls under, as `(key, rate)`: its chat's and the
/// bot's.
pub fn telegram(channel_id: &str, recipient: &str) -> Vec<(String, Rate)> {
    // Group and channel chat ids are negative.
    let chat = if recipient.starts_with('-') {
        TELEGRAM_PER_GROUP
    } else {
        TELEGRAM_PER_CHAT
    };
    vec![
        (format!("{channel_id}/{recipient}"), chat),
        (channel_id.to_owned(), TELEGRAM_PER_BOT),
    ]
}

/// The limit of a sending number (SMS) at `per_second` messages a second, with no burst beyond
/// one second's worth: carriers filter numbers that exceed their rate.
pub fn per_second(key: &str, per_second: f64) -> Vec<(String, Rate)> {
    // One send every 1/rate seconds exactly (1.5/s is one per 667 ms, never rounded up to 2/s),
    // with a second's worth allowed back to back.
    let per_second = per_second.clamp(0.001, 10_000.0);
    let burst = (per_second.floor() as u32).max(1);
    let rate = Rate::new(1, Duration::from_secs_f64(1.0 / per_second), burst);
    vec![(key.to_owned(), rate)]
}

/// The pacing state of this process.
#[derive(Debug, Default)]
pub struct Pacer {
    /// key → theoretical arrival time of the next send.
    cells: Mutex<HashMap<String, Instant>>,
}

impl Pacer {
    /// Books a send under `limits` at the earliest time they all allow, and returns how long to
    /// wait for it (zero: now). Not booked — and `None` returned — if the wait would exceed
    /// `max_wait`: the caller defers and asks again later.
    pub fn reserve(&self, limits: &[(String, Rate)], max_wait: Duration) -> Option<Duration> {
        if limits.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        if cells.len() > 100_000 {
            cells.retain(|_, tat| *tat > now);
        }
        let start = limits
            .iter()
            .map(|(key, rate)| {
                let tat = cells.get(key).copied().unwrap_or(now).max(now);
                tat.checked_sub(rate.tolerance()).unwrap_or(now).max(now)
            })
            .max()
            .unwrap_or(now);
        let wait = start - now;
        if wait > max_wait {
            return None;
        }
        // Each cell books one emission from its own schedule: a send held back by one chat's
        // limit still counts once against the bot's rate, without blocking other chats now.
        for (key, rate) in limits {
            let tat = cells.get(key).copied().unwrap_or(now).max(now);
            cells.insert(key.clone(), tat + rate.interval());
        }
        Some(wait)
    }
}

impl Pacer {
    /// Books `extra` more sends under `limits`, already made: a message the provider took as
    /// several (an SMS split into parts) counts each part, so the sends after it wait for them.
    pub fn charge(&self, limits: &[(String, Rate)], extra: u32) {
        if extra == 0 {
            return;
        }
        let now = Instant::now();
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        for (key, rate) in limits {
            let tat = cells.get(key).copied().unwrap_or(now).max(now);
            cells.insert(key.clone(), tat + rate.interval() * extra);
        }
    }

    /// The provider asked us to wait (a flood-control `retry_after`): nothing under these limits
    /// starts before `wait` has passed.
    pub fn hold(&self, limits: &[(String, Rate)], wait: Duration) {
        let until = Instant::now() + wait;
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        for (key, rate) in limits {
            // A send is allowed once `tat - tolerance <= now`: put `tat` that far past `until`.
            let tat = until + rate.tolerance();
            let cell = cells.entry(key.clone()).or_insert(tat);
            *cell = (*cell).max(tat);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Vec<(String, Rate)> {
        telegram("bot", "42")
    }

    #[test]
    fn a_chat_gets_its_burst_then_one_per_second() {
        let pacer = Pacer::default();
        let max = Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(pacer.reserve(&chat(), max), Some(Duration::ZERO));
        }
        let fourth = pacer.reserve(&chat(), max).expect("within max");
        assert!(
            fourth > Duration::from_millis(900) && fourth <= Duration::from_secs(1),
            "{fourth:?}"
        );
        let fifth = pacer.reserve(&chat(), max).expect("within max");
        assert!(fifth > Duration::from_millis(1900), "{fifth:?}");
        // Another chat of the same bot is not held back by this one.
        let other = telegram("bot", "43");
        assert_eq!(pacer.reserve(&other, max), Some(Duration::ZERO));
    }

    #[test]
    fn the_bot_wide_limit_spreads_many_chats_and_long_waits_are_not_booked() {
        let pacer = Pacer::default();
        let max = Duration::from_secs(10);
        let mut waits = Vec::new();
        for chat in 0..90 {
            let l = telegram("bot", &chat.to_string());
            waits.push(pacer.reserve(&l, max).expect("within max"));
        }
        // 30 at once (the burst), then one every 1/30 s: the 90th about 2 s later.
        assert_eq!(waits[29], Duration::ZERO);
        assert!(waits[89] > Duration::from_millis(1900), "{:?}", waits[89]);
        assert!(waits[89] < Duration::from_millis(2100), "{:?}", waits[89]);
        // A group allows 20 a minute: beyond the burst, a wait longer than `max` is refused
        // and not booked.
        let group = telegram("bot", "-100");
        for _ in 0..3 {
            assert!(pacer.reserve(&group, max).is_some());
        }
        assert!(pacer.reserve(&group, Duration::from_millis(100)).is_none());
        // The refusal booked nothing: the next send waits for the fourth slot (3 s after the
        // first group send, one 3 s interval past the 6 s tolerance), not the fifth (6 s).
        let next = pacer.reserve(&group, max).expect("within max");
        assert!(
            next < Duration::from_millis(3_100),
            "the refusal booked nothing: {next:?}"
        );
        assert!(next > Duration::from_millis(2_500), "{next:?}");
    }

    #[test]
    fn a_flood_wait_holds_every_send_under_the_same_limits() {
        let pacer = Pacer::default();
        pacer.hold(&chat(), Duration::from_secs(5));
        let wait = pacer
            .reserve(&chat(), Duration::from_secs(60))
            .expect("booked");
        assert!(wait > Duration::from_millis(4900), "{wait:?}");
        // The bot-wide cell is held too: another chat of the same bot waits as well.
        let other = telegram("bot", "43");
        let wait = pacer
            .reserve(&other, Duration::from_secs(60))
            .expect("booked");
        assert!(wait > Duration::from_millis(4900), "{wait:?}");
    }

    #[test]
    fn channels_without_limits_never_wait() {
        let pacer = Pacer::default();
        let none: Vec<(String, Rate)> = Vec::new();
        for _ in 0..1000 {
            assert_eq!(pacer.reserve(&none, Duration::ZERO), Some(Duration::ZERO));
        }
    }
}
