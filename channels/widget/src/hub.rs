//! The hub: which sockets each visitor has open, and the answer being streamed to them.
//!
//! The hub carries no message content: stored messages are read from the database by each socket
//! (the hub only says "there is something new"), so a socket can never skip or repeat one. What
//! only lives here is the preview of an answer being written: its text so far is kept per visitor
//! so that a socket that (re)connects mid-stream gets the preview up to now and then every later
//! delta — [`Hub::subscribe`] takes the snapshot and joins the stream under one lock, so nothing
//! falls between the two.
//!
//! Visitors are keyed by visitor id: ids are made by the gateway (random, 131 bits) and bound to
//! one tenant by the signed visitor token, so one id never names two tenants' visitors.
//!
//! A socket that does not keep up (its queue of events is full) is dropped from the hub; its
//! connection then closes and the client resumes from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// Events queued per socket before it counts as too slow.
const QUEUE: usize = 64;

/// What a socket is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent {
    /// New messages are stored for the visitor: read the conversation after the last seq sent.
    Messages,
    /// The bot started (`true`) or stopped preparing an answer.
    Typing(bool),
    /// More of the answer's preview: `offset` is the preview's length (UTF-16 units) before `delta`.
    Stream {
        stream_id: Arc<str>,
        offset: usize,
        delta: Arc<str>,
    },
    /// The preview is void (the answer failed; it will be tried again).
    StreamReset { stream_id: Arc<str> },
}

/// What a new socket must show before the live events: the previews so far, and whether the bot
/// is preparing an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub typing: bool,
    /// `(stream id, preview text)` of each answer being written.
    pub streams: Vec<(Arc<str>, String)>,
}

#[derive(Default)]
struct Visitor {
    sockets: Vec<(u64, mpsc::Sender<HubEvent>)>,
    /// Turns being prepared for the visitor (usually 0 or 1; two conversations can overlap when
    /// one is closed and the next opened while an answer is written).
    typing: u32,
    streams: Vec<Preview>,
}

struct Preview {
    id: Arc<str>,
    text: String,
    /// Length of `text` in UTF-16 code units (what a browser's `String.length` counts).
    units: usize,
}

impl Visitor {
    fn idle(&self) -> bool {
        self.sockets.is_empty() && self.typing == 0 && self.streams.is_empty()
    }

    /// Queues `event` for every socket; sockets that cannot take it are dropped (they resume).
    fn broadcast(&mut self, event: &HubEvent) {
        self.sockets
            .retain(|(_, tx)| tx.try_send(event.clone()).is_ok());
    }
}

#[derive(Default)]
struct Inner {
    visitors: HashMap<String, Visitor>,
    next_id: u64,
}

/// The hub. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("sockets", &self.sockets())
            .finish()
    }
}

/// One socket's place in the hub; leaves it when dropped.
pub struct Subscription {
    hub: Hub,
    visitor: String,
    id: u64,
    pub events: mpsc::Receiver<HubEvent>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        if let Some(v) = inner.visitors.get_mut(&self.visitor) {
            v.sockets.retain(|(id, _)| *id != self.id);
            if v.idle() {
                inner.visitors.remove(&self.visitor);
            }
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update leaves the maps consistent; a panic elsewhere cannot corrupt them.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins a socket to its visitor's events, with what it must show first.
    pub fn subscribe(&self, visitor: &str) -> (Subscription, Snapshot) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        let v = inner.visitors.entry(visitor.to_owned()).or_default();
        v.sockets.push((id, tx));
        let snapshot = Snapshot {
            typing: v.typing > 0,
            streams: v
                .streams
                .iter()
                .map(|p| (p.id.clone(), p.text.clone()))
                .collect(),
        };
        drop(inner);
        (
            Subscription {
                hub: self.clone(),
                visitor: visitor.to_owned(),
                id,
                events: rx,
            },
            snapshot,
        )
    }

    /// Open sockets, all visitors.
    pub fn sockets(&self) -> usize {
        self.lock().visitors.values().map(|v| v.sockets.len()).sum()
    }

    /// Whether the visitor has a socket open.
    pub fn is_connected(&self, visitor: &str) -> bool {
        self.lock()
            .visitors
            .get(visitor)
            .is_some_and(|v| !v.sockets.is_empty())
    }

    /// New stored messages for the visitor.
    pub fn messages(&self, visitor: &str) {
        if let Some(v) = self.lock().visitors.get_mut(visitor) {
            v.broadcast(&HubEvent::Messages);
        }
    }

    /// The bot started or stopped preparing an answer for the visitor (calls pair up: "typing"
    /// shows while any answer is being prepared).
    pub fn typing(&self, visitor: &str, on: bool) {
        let mut inner = self.lock();
        if !on && !inner.visitors.contains_key(visitor) {
            return;
        }
        let v = inner.visitors.entry(visitor.to_owned()).or_default();
        let was = v.typing > 0;
        v.typing = if on {
            v.typing + 1
        } else {
            v.typing.saturating_sub(1)
        };
        if was != (v.typing > 0) {
            v.broadcast(&HubEvent::Typing(v.typing > 0));
        }
        if v.idle() {
            inner.visitors.remove(visitor);
        }
    }

    /// Appends `delta` to the preview of the answer `stream_id`; a different id starts a new one.
    pub fn stream_delta(&self, visitor: &str, stream_id: &str, delta: &str) {
        if delta.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let v = inner.visitors.entry(visitor.to_owned()).or_default();
        let index = match v.streams.iter().position(|p| &*p.id == stream_id) {
            Some(i) => i,
            None => {
                v.streams.push(Preview {
                    id: Arc::from(stream_id),
                    text: String::new(),
                    units: 0,
                });
                v.streams.len() - 1
            }
        };
        let preview = &mut v.streams[index];
        let event = HubEvent::Stream {
            stream_id: preview.id.clone(),
            offset: preview.units,
            delta: Arc::from(delta),
        };
        preview.text.push_str(delta);
        preview.units += delta.encode_utf16().count();
        v.broadcast(&event);
    }

    /// The answer is stored (its message will reach the sockets): forget the preview.
    pub fn stream_end(&self, visitor: &str, stream_id: &str) {
        self.finish(visitor, stream_id, false);
    }

    /// The answer failed: tell the sockets to drop the preview.
    pub fn stream_reset(&self, visitor: &str, stream_id: &str) {
        self.finish(visitor, stream_id, true);
    }

    fn finish(&self, visitor: &str, stream_id: &str, reset: bool) {
        let mut inner = self.lock();
        let Some(v) = inner.visitors.get_mut(visitor) else {
            return;
        };
        if let Some(i) = v.streams.iter().position(|p| &*p.id == stream_id) {
            let preview = v.streams.remove(i);
            if reset {
                v.broadcast(&HubEvent::StreamReset {
                    stream_id: preview.id,
                });
            }
        }
        if v.idle() {
            inner.visitors.remove(visitor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_late_socket_gets_the_preview_then_the_rest() {
        let hub = Hub::default();
        let (mut early, snap) = hub.subscribe("w");
        assert_eq!(snap, Snapshot::default());
        hub.typing("w", true);
        hub.stream_delta("w", "m1", "Hé");
        hub.stream_delta("w", "m1", "llo 😀");
        let (mut late, snap) = hub.subscribe("w");
        assert_eq!(snap.streams, vec![(Arc::from("m1"), "Héllo 😀".to_owned())]);
        assert!(snap.typing);
        hub.stream_delta("w", "m1", "!");
        // UTF-16: "Héllo 😀" is 8 units (the emoji takes two).
        let expect_late = HubEvent::Stream {
            stream_id: "m1".into(),
            offset: 8,
            delta: "!".into(),
        };
        assert_eq!(late.events.recv().await, Some(expect_late.clone()));
        let mut seen = Vec::new();
        while let Ok(e) = early.events.try_recv() {
            seen.push(e);
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[3], expect_late);
        hub.stream_end("w", "m1");
        hub.typing("w", false);
        let (_again, snap) = hub.subscribe("w");
        assert_eq!(snap, Snapshot::default());
    }

    #[tokio::test]
    async fn two_answers_at_once_keep_their_own_previews_and_typing_pairs_up() {
        let hub = Hub::default();
        let (mut s, _) = hub.subscribe("w");
        hub.typing("w", true);
        hub.typing("w", true);
        hub.stream_delta("w", "a", "one");
        hub.stream_delta("w", "b", "two");
        hub.stream_delta("w", "a", "!");
        hub.typing("w", false);
        let (_late, snap) = hub.subscribe("w");
        assert!(snap.typing, "one answer is still being prepared");
        assert_eq!(snap.streams.len(), 2);
        assert_eq!(&*snap.streams[0].1, "one!");
        let mut offsets = Vec::new();
        while let Ok(e) = s.events.try_recv() {
            if let HubEvent::Stream {
                stream_id, offset, ..
            } = e
            {
                offsets.push((stream_id.to_string(), offset));
            }
        }
        assert_eq!(offsets, [("a".into(), 0), ("b".into(), 0), ("a".into(), 3)]);
        hub.typing("w", false);
        assert_eq!(s.events.recv().await, Some(HubEvent::Typing(false)));
    }

    #[tokio::test]
    async fn reset_is_broadcast_and_entries_are_freed() {
        let hub = Hub::default();
        let (mut s, _) = hub.subscribe("w");
        hub.stream_delta("w", "m1", "abc");
        hub.stream_reset("w", "m1");
        let _ = s.events.recv().await;
        assert_eq!(
            s.events.recv().await,
            Some(HubEvent::StreamReset {
                stream_id: "m1".into()
            })
        );
        drop(s);
        assert_eq!(hub.sockets(), 0);
        assert!(hub.lock().visitors.is_empty());
    }

    #[tokio::test]
    async fn a_socket_that_does_not_read_is_dropped() {
        let hub = Hub::default();
        let (mut slow, _) = hub.subscribe("w");
        for _ in 0..=QUEUE {
            hub.messages("w");
        }
        assert!(!hub.is_connected("w"));
        let mut n = 0;
        while slow.events.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, QUEUE, "the queued events, then closed");
    }
}
