//! Visitor tokens: `v1.<tenant id>.<visitor id>.<issued ms>.<signature>`.
//!
//! The browser keeps the token so that a returning visitor continues the same conversation. The
//! signature (HMAC-SHA256, hex) is over everything before it, with a key derived from the
//! gateway's secret key for this one purpose; the tenant id inside binds a token to one tenant, so
//! a token shown with another tenant's widget key is refused. Nothing secret is in a token: it is
//! a bearer name for the visitor, as a session cookie would be.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Tokens older than this are refused (they are renewed at every connection).
pub const MAX_AGE_MS: i64 = 400 * 24 * 3600 * 1000;

/// The key that signs visitor tokens.
#[derive(Clone)]
pub struct VisitorTokenKey([u8; 32]);

impl std::fmt::Debug for VisitorTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VisitorTokenKey(..)")
    }
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitorToken {
    pub tenant_id: String,
    pub visitor_id: String,
    pub issued_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a visitor token")]
    Malformed,
    #[error("the visitor token's signature does not match")]
    BadSignature,
    #[error("the visitor token belongs to another tenant")]
    OtherTenant,
    #[error("the visitor token has expired")]
    Expired,
}

impl VisitorTokenKey {
    /// Derives the token key from the gateway's secret key (HMAC of a fixed label).
    pub fn derive(secret: &[u8]) -> VisitorTokenKey {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(b"switchboard widget visitor token v1");
        VisitorTokenKey(mac.finalize().into_bytes().into())
    }

    fn mac(&self, body: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(body.as_bytes());
        mac
    }

    pub fn sign(&self, token: &VisitorToken) -> String {
        let body = format!(
            "v1.{}.{}.{}",
            token.tenant_id, token.visitor_id, token.issued_ms
        );
        let sig = hex::encode(self.mac(&body).finalize().into_bytes());
        format!("{body}.{sig}")
    }

    /// Checks a token presented for `tenant_id` at `now_ms`.
    pub fn verify(
        &self,
        token: &str,
        tenant_id: &str,
        now_ms: i64,
    ) -> Result<VisitorToken, TokenError> {
        if token.len() > 256 {
            return Err(TokenError::Malformed);
        }
        let (body, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let sig = hex::decode(sig).map_err(|_| TokenError::Malformed)?;
        let mut parts = body.split('.');
        let (Some("v1"), Some(tenant), Some(visitor), Some(issued), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        // Constant-time comparison of the signature.
        self.mac(body)
            .verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        if tenant != tenant_id {
            return Err(TokenError::OtherTenant);
        }
        let issued_ms: i64 = issued.parse().map_err(|_| TokenError::Malformed)?;
        if !is_visitor_id(visitor) {
            return Err(TokenError::Malformed);
        }
        if now_ms.saturating_sub(issued_ms) > MAX_AGE_MS {
            return Err(TokenError::Expired);
        }
        Ok(VisitorToken {
            tenant_id: tenant.to_owned(),
            visitor_id: visitor.to_owned(),
            issued_ms,
        })
    }
}

/// Visitor ids are `w_` and 22 alphanumerics (made by the gateway).
pub fn is_visitor_id(s: &str) -> bool {
    s.len() == 24 && s.starts_with("w_") && s[2..].bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> VisitorToken {
        VisitorToken {
            tenant_id: "t-1".into(),
            visitor_id: "w_abcdefghijklmnopqrstuv".into(),
            issued_ms: 1_000,
        }
    }

    #[test]
    fn signs_and_verifies() {
        let key = VisitorTokenKey::derive(b"secret");
        let t = key.sign(&token());
        assert_eq!(key.verify(&t, "t-1", 2_000), Ok(token()));
    }

    #[test]
    fn refuses_tampering_other_tenants_other_keys_and_age() {
        let key = VisitorTokenKey::derive(b"secret");
        let t = key.sign(&token());
        let forged = t.replace("abcdefghijklmnopqrstuv", "abcdefghijklmnopqrstuw");
        assert_eq!(
            key.verify(&forged, "t-1", 2_000),
            Err(TokenError::BadSignature)
        );
        assert_eq!(key.verify(&t, "t-2", 2_000), Err(TokenError::OtherTenant));
        let other = VisitorTokenKey::derive(b"other secret");
        assert_eq!(
            other.verify(&t, "t-1", 2_000),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            key.verify(&t, "t-1", MAX_AGE_MS + 2_000),
            Err(TokenError::Expired)
        );
        for junk in ["", "v1", "a.b.c.d.e", "v1.t-1.w.1.zz", &"x".repeat(300)] {
            assert!(key.verify(junk, "t-1", 2_000).is_err(), "{junk}");
        }
    }
}
