//! API-key authentication: `Authorization: Bearer <key>` fixes the tenant and the role.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::core::Role;
use crate::store::tenants::Principal;

/// The authenticated caller. Extracting it answers 401 when the key is missing or unknown.
pub struct Caller(pub Principal);

impl Caller {
    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<&Principal, ApiError> {
        if roles.contains(&self.0.role) {
            Ok(&self.0)
        } else {
            let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::forbidden(format!(
                "this call needs the {} role; the key has {}",
                allowed.join(" or "),
                self.0.role
            )))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing_api_key", "send Authorization: Bearer <api key>")
        })?;
        let key = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("missing_api_key", "send Authorization: Bearer <api key>")
            })?;
        match state.store.authenticate(key).await? {
            Some(principal) => Ok(Caller(principal)),
            None => Err(ApiError::unauthorized(
                "invalid_api_key",
                "the API key is not valid",
            )),
        }
    }
}
