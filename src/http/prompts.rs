//! `/v1/prompts`: a tenant's prompt templates (persona, answer, no_answer, fallback) — the
//! built-in ones from `prompts/`, or the tenant's own. A template is checked before it is saved
//! (syntax, variables, renders to something); see `crate::answer::prompts`.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, json_body};
use crate::answer::prompts::{self, PromptError};
use crate::core::Role;

const EDITORS: &[Role] = &[Role::Admin, Role::Creator];

/// `GET /v1/prompts` → `{"prompts":[{"name","source":"builtin"|"tenant","body","builtin"}]}`.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(EDITORS)?;
    let own = state.store.prompt_templates(&principal.tenant_id).await?;
    let prompts: Vec<_> = prompts::NAMES
        .iter()
        .map(|name| {
            let builtin = prompts::builtin(name).unwrap_or_default();
            match own.get(*name) {
                Some(body) => {
                    json!({"name": name, "source": "tenant", "body": body, "builtin": builtin})
                }
                None => {
                    json!({"name": name, "source": "builtin", "body": builtin, "builtin": builtin})
                }
            }
        })
        .collect();
    Ok(Json(json!({ "prompts": prompts })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PutPrompt {
    body: String,
}

/// `PUT /v1/prompts/{name}` `{"body"}` → 200, or 400 `invalid_template` with the reason, 404 for
/// a name that is not a template.
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(EDITORS)?;
    if prompts::builtin(&name).is_none() {
        return Err(ApiError::not_found("prompt template"));
    }
    let request: PutPrompt = json_body(body, "invalid_body")?;
    if request.body.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid_template",
            "a template may not contain NUL characters",
        ));
    }
    let checked = {
        let (name, body) = (name.clone(), request.body.clone());
        prompts::off_runtime(move || prompts::validate(&name, &body))
            .await
            .and_then(|r| r)
    };
    match checked {
        Ok(()) => {}
        Err(PromptError::Unknown(_)) => return Err(ApiError::not_found("prompt template")),
        Err(PromptError::Template(reason)) => {
            return Err(ApiError::bad_request("invalid_template", reason));
        }
    }
    state
        .store
        .set_prompt_template(&principal.tenant_id, &name, &request.body)
        .await?;
    Ok(Json(
        json!({"name": name, "source": "tenant", "body": request.body}),
    ))
}

/// `DELETE /v1/prompts/{name}`: back to the built-in template (204; 404 if the tenant had none).
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(EDITORS)?;
    if state
        .store
        .delete_prompt_template(&principal.tenant_id, &name)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("prompt template"))
    }
}
