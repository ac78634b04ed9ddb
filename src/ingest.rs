//! Ingest: the gate every inbound message passes, whatever its channel.
//!
//! Where it sits: right after a channel adapter verified and normalized a request, before the
//! router. It stores the message (deduplicated on the provider id) and only then lets the caller
//! acknowledge the provider; then it hands the conversation to the router. It never waits for
//! the answer: acknowledging fast is what keeps providers from redelivering.

use metrics::counter;
use switchboard_channel::{InboundEvent, InboundMessage, Mail};
use tracing::instrument;

use crate::registry::StoredOriginal;
use crate::router::Router;
use crate::store::Store;
use crate::store::batch::Batcher;
use crate::store::channels::Channel;
use crate::store::messages::{IngestItem, Ingested};

/// The ingest gate. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    /// Group commit: concurrent requests share transactions (each is answered after its commit).
    /// `None` on SQLite, where messages join the store's tick writer (see `store::tick`).
    batcher: Option<Batcher<IngestItem, Ingested>>,
    router: Router,
    store: Store,
}

/// What one provider request carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EventCounts {
    pub messages: usize,
    pub statuses: usize,
    pub notices: usize,
}

/// Most messages stored in one transaction.
const MAX_BATCH: usize = 256;

impl Ingest {
    pub fn new(store: Store, router: Router) -> Ingest {
        let batcher = store.tick().is_none().then(|| {
            Batcher::spawn(store.write_parallelism(), MAX_BATCH, {
                let store = store.clone();
                move |items| {
                    let store = store.clone();
                    async move { store.ingest_batch(items).await }
                }
            })
        });
        Ingest {
            batcher,
            router,
            store,
        }
    }

    /// Stores everything one provider request (a webhook POST, a `getUpdates` batch) carried,
    /// one event at a time in payload order, so two messages of one person keep their order.
    /// Returns after all of it is durable: only then may the provider be acknowledged.
    pub async fn apply(
        &self,
        channel: &Channel,
        events: Vec<InboundEvent>,
    ) -> Result<EventCounts, sqlx::Error> {
        self.apply_with_original(channel, events, None).await
    }

    /// [`Ingest::apply`], keeping `original` (the request as received) with the mails it carried.
    pub async fn apply_with_original(
        &self,
        channel: &Channel,
        events: Vec<InboundEvent>,
        original: Option<&StoredOriginal>,
    ) -> Result<EventCounts, sqlx::Error> {
        let mut counts = EventCounts::default();
        // Whether the message just before was a redelivery: the opt-out (or opt-in) that came
        // with it was applied the first time, and must not undo a later change now.
        let mut redelivered = false;
        for event in events {
            match event {
                InboundEvent::Message(message) => {
                    redelivered = self.accept(channel, message).await?.duplicate;
                    counts.messages += 1;
                }
                InboundEvent::Mail(mail) => {
                    if let Some(original) = original {
                        self.store
                            .keep_original(&channel.id, &mail.message.provider_id, original)
                            .await?;
                    }
                    redelivered = self.accept_mail(channel, *mail).await?.duplicate;
                    counts.messages += 1;
                }
                InboundEvent::Subscription {
                    external_id,
                    subscribed,
                    reason,
                } => {
                    if !redelivered {
                        self.store
                            .set_subscription(channel, &external_id, subscribed, &reason)
                            .await?;
                    }
                    counts.notices += 1;
                }
                InboundEvent::Status(status) => {
                    self.store.apply_status(&channel.id, &status).await?;
                    counts.statuses += 1;
                }
                InboundEvent::Notice { topic, detail } => {
                    self.store.record_notice(channel, &topic, &detail).await?;
                    counts.notices += 1;
                }
                InboundEvent::Reachability {
                    external_id,
                    reachable,
                    reason,
                    at,
                } => {
                    self.store
                        .set_reachability(channel, &external_id, reachable, &reason, at)
                        .await?;
                    counts.notices += 1;
                }
            }
        }
        Ok(counts)
    }

    /// Stores an email in its thread: the open conversation one of our Message-IDs (or a
    /// `reply+<token>` address) in it names, or the one holding a mail it answers; otherwise a
    /// new conversation whose thread is this mail's Message-ID.
    pub async fn accept_mail(
        &self,
        channel: &Channel,
        mail: Mail,
    ) -> Result<Ingested, sqlx::Error> {
        let ours: Vec<String> = mail
            .references
            .iter()
            .filter_map(|id| switchboard_channel_email::conversation_of(id).map(str::to_owned))
            .chain(mail.reply_tokens.iter().cloned())
            .collect();
        let thread = self
            .store
            .email_thread(
                &channel.id,
                &mail.message.contact.external_id,
                &ours,
                &mail.references,
            )
            .await?
            .unwrap_or_else(|| mail.message.provider_id.clone());
        self.submit(channel, mail.message, thread, mail.subject)
            .await
    }

    /// Stores `msg` once (durably, before returning) and queues its conversation for the router.
    pub async fn accept(
        &self,
        channel: &Channel,
        msg: InboundMessage,
    ) -> Result<Ingested, sqlx::Error> {
        self.submit(channel, msg, String::new(), None).await
    }

    #[instrument(skip_all, fields(tenant = %channel.tenant_id, channel = %channel.kind))]
    async fn submit(
        &self,
        channel: &Channel,
        mut msg: InboundMessage,
        thread: String,
        subject: Option<String>,
    ) -> Result<Ingested, sqlx::Error> {
        // NUL is valid in JSON but not storable on every backend: never let it fail a webhook.
        strip_nul(&mut msg.text);
        if let Some(name) = msg.contact.display_name.as_mut() {
            strip_nul(name);
        }
        for a in &mut msg.attachments {
            strip_nul(&mut a.reference);
            if let Some(c) = a.caption.as_mut() {
                strip_nul(c);
            }
        }
        let item = IngestItem {
            tenant_id: channel.tenant_id.clone(),
            channel_id: channel.id.clone(),
            message: msg,
            thread,
            subject,
        };
        let mut ingested = match (&self.batcher, self.store.tick()) {
            (Some(batcher), _) => batcher.submit(item).await?,
            (None, Some(tick)) => tick.ingest(item).await?,
            (None, None) => return Err(sqlx::Error::PoolClosed), // cannot happen: see `new`
        };
        let outcome = if ingested.duplicate {
            "duplicate"
        } else {
            "stored"
        };
        counter!("switchboard_inbound_total", "channel" => channel.kind.as_str(), "outcome" => outcome)
            .increment(1);
        tracing::debug!(conversation = %ingested.conversation_id, outcome, "inbound message");
        // Also on a duplicate: if the first copy was never answered (a crash), this gets it going.
        self.router
            .kick_with(&ingested.conversation_id, ingested.turn.take());
        Ok(ingested)
    }
}

fn strip_nul(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "");
    }
}
