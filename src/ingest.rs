//! Ingest: the gate every inbound message passes, whatever its channel.
//!
//! Where it sits: right after a channel adapter verified and normalized a request, before the
//! router. It stores the message (deduplicated on the provider id) and only then lets the caller
//! acknowledge the provider; then it hands the conversation to the router. It never waits for
//! the answer: acknowledging fast is what keeps providers from redelivering.

use metrics::counter;
use switchboard_channel::InboundMessage;
use tracing::instrument;

use crate::router::Router;
use crate::store::Store;
use crate::store::batch::Batcher;
use crate::store::channels::Channel;
use crate::store::messages::{IngestItem, Ingested};

/// The ingest gate. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    /// Group commit: concurrent requests share transactions (each is answered after its commit).
    batcher: Batcher<IngestItem, Ingested>,
    router: Router,
}

/// Most messages stored in one transaction.
const MAX_BATCH: usize = 256;

impl Ingest {
    pub fn new(store: Store, router: Router) -> Ingest {
        let batcher = Batcher::spawn(store.write_parallelism(), MAX_BATCH, move |items| {
            let store = store.clone();
            async move { store.ingest_batch(items).await }
        });
        Ingest { batcher, router }
    }

    /// Stores `msg` once (durably, before returning) and queues its conversation for the router.
    #[instrument(skip_all, fields(tenant = %channel.tenant_id, channel = %channel.kind))]
    pub async fn accept(
        &self,
        channel: &Channel,
        mut msg: InboundMessage,
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
        let ingested = self
            .batcher
            .submit(IngestItem {
                tenant_id: channel.tenant_id.clone(),
                channel_id: channel.id.clone(),
                message: msg,
            })
            .await?;
        let outcome = if ingested.duplicate {
            "duplicate"
        } else {
            "stored"
        };
        counter!("switchboard_inbound_total", "channel" => channel.kind.as_str(), "outcome" => outcome)
            .increment(1);
        tracing::debug!(conversation = %ingested.conversation_id, outcome, "inbound message");
        // Also on a duplicate: if the first copy was never answered (a crash), this gets it going.
        self.router.kick(&ingested.conversation_id);
        Ok(ingested)
    }
}

fn strip_nul(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "");
    }
}
