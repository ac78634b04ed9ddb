//! Outbound: a reply POSTed to the tenant's callback URL.
//!
//! The body is JSON; `X-Switchboard-Signature: sha256=<hex HMAC-SHA256(signing_secret, body)>` lets
//! the receiver check it came from us, and `Idempotency-Key: <delivery id>` stays the same across
//! retries so a receiver can drop a repeat after our crash-and-retry.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchboard_channel::{OutboundMessage, Receipt, SendError, parse_retry_after};

use crate::config::ApiChannelConfig;

/// Header carrying the HMAC of the callback body.
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
/// Header carrying the delivery id, stable across retries.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Sends replies of the `api` channel. Cheap to clone (shares the HTTP client).
#[derive(Debug, Clone)]
pub struct ApiSender {
    client: reqwest::Client,
}

impl ApiSender {
    pub fn new(client: reqwest::Client) -> Self {
        ApiSender { client }
    }

    /// Delivers `msg`. Without a callback URL there is nowhere to push to: the reply is already
    /// stored and readable through the API, so that counts as delivered.
    pub async fn send(
        &self,
        config: &ApiChannelConfig,
        msg: &OutboundMessage,
    ) -> Result<Receipt, SendError> {
        let Some(url) = &config.callback_url else {
            return Ok(Receipt::default());
        };
        let body = serde_json::to_vec(msg).map_err(|e| SendError::Permanent(e.to_string()))?;
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_HEADER, &msg.delivery_id);
        if let Some(secret) = &config.signing_secret {
            request = request.header(SIGNATURE_HEADER, sign(secret.expose(), &body));
        }
        let response = request.body(body).send().await.map_err(|e| {
            SendError::Transient(format!(
                "callback request failed: {}",
                switchboard_channel::egress::describe(e)
            ))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(Receipt::default());
        }
        let retry_after = parse_retry_after(
            response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
        );
        let reason = format!("callback answered {status}");
        Err(classify(status.as_u16(), retry_after, reason))
    }
}

/// `sha256=<hex>` over the raw body.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Maps an HTTP answer to what the outbox should do next.
fn classify(status: u16, retry_after: Option<Duration>, reason: String) -> SendError {
    match (status, retry_after) {
        (429 | 503, Some(wait)) => SendError::RetryAfter(wait, reason),
        (408 | 425 | 429, None) | (500..=599, _) => SendError::Transient(reason),
        _ => SendError::Permanent(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn statuses_map_to_what_the_outbox_should_do() {
        let r = || "r".to_string();
        assert_eq!(
            classify(429, Some(Duration::from_secs(7)), r()),
            SendError::RetryAfter(Duration::from_secs(7), r())
        );
        assert_eq!(classify(429, None, r()), SendError::Transient(r()));
        assert_eq!(classify(502, None, r()), SendError::Transient(r()));
        assert_eq!(classify(404, None, r()), SendError::Permanent(r()));
        assert_eq!(classify(400, None, r()), SendError::Permanent(r()));
    }
}
