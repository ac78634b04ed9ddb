//! `/v1/knowledge/*`: creators upload documents, list and delete them, and see exactly what the
//! bot would retrieve for a question (the retrieval debugger).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::core::Role;
use crate::knowledge::extract::Format;
use crate::knowledge::{KnowledgeError, Upload};

/// Largest document upload.
pub const MAX_UPLOAD_BYTES: usize = 16 * 1024 * 1024;
/// Most hits the debugger returns.
const MAX_K: usize = 50;

const EDITORS: &[Role] = &[Role::Admin, Role::Creator];

impl From<KnowledgeError> for ApiError {
    fn from(e: KnowledgeError) -> Self {
        match e {
            KnowledgeError::Empty => {
                ApiError::bad_request("empty_document", "the document has no text to index")
            }
            KnowledgeError::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "document_too_large",
                e.to_string(),
            ),
            KnowledgeError::Store(e) => e.into(),
            KnowledgeError::Index(e) => ApiError::internal(format!("vector index: {e:#}")),
            KnowledgeError::Embedding(e) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "embedding_unavailable",
                format!(
                    "{e}; the document is stored and will be indexed when the embedding model answers (at the next start)"
                ),
            ),
        }
    }
}

#[derive(serde::Deserialize)]
struct JsonUpload {
    title: Option<String>,
    content: String,
    #[serde(default)]
    format: Option<String>,
    /// Identifies the document for later replacement (default: the title).
    #[serde(default)]
    source: Option<String>,
}

fn format_of(name: Option<&str>, explicit: Option<&str>) -> Result<Format, ApiError> {
    let unsupported = |what: &str| {
        ApiError::bad_request(
            "unsupported_format",
            format!(
                "{what}: documents are markdown (.md), text (.txt), html (.html) or pdf (.pdf)"
            ),
        )
    };
    match (explicit, name) {
        (Some(f), _) => Format::parse(f).ok_or_else(|| unsupported(f)),
        (None, Some(n)) => Format::from_path(n).ok_or_else(|| unsupported(n)),
        (None, None) => Ok(Format::Markdown),
    }
}

/// `POST /v1/knowledge/documents`: multipart `file` (with optional `title`, `format`), or JSON
/// `{"title","content","format"}` → 201 `{"document_id","chunks","status"}` (200 if unchanged).
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(EDITORS)?.clone();
    let is_multipart = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let upload = if is_multipart {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
        let (mut file, mut title, mut format) = (None, None, None);
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?
        {
            let name = field.name().unwrap_or_default().to_owned();
            let file_name = field.file_name().map(str::to_owned);
            let bytes = field
                .bytes()
                .await
                .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
            let text = || {
                String::from_utf8(bytes.to_vec()).map_err(|_| {
                    ApiError::bad_request("invalid_encoding", format!("{name} is not UTF-8 text"))
                })
            };
            match name.as_str() {
                "file" => file = Some((file_name, bytes)),
                "title" => title = Some(text()?),
                "format" => format = Some(text()?),
                _ => {}
            }
        }
        let (file_name, bytes) = file.ok_or_else(|| {
            ApiError::bad_request(
                "missing_file",
                "send the document in a multipart field `file`",
            )
        })?;
        let format = format_of(file_name.as_deref(), format.as_deref())?;
        let content = if format == Format::Pdf {
            state
                .knowledge
                .pdf_text(bytes.to_vec())
                .await
                .map_err(|e| ApiError::bad_request("unreadable_pdf", e))?
        } else {
            String::from_utf8(bytes.to_vec()).map_err(|_| {
                ApiError::bad_request("invalid_encoding", "the file is not UTF-8 text")
            })?
        };
        Upload {
            title,
            format,
            content,
            source: file_name,
        }
    } else {
        let bytes = axum::body::Bytes::from_request(request, &state).await;
        let body: JsonUpload = super::error::json_body(bytes, "invalid_document")?;
        let format = format_of(None, body.format.as_deref())?;
        if format == Format::Pdf {
            return Err(ApiError::bad_request(
                "unsupported_format",
                "send a PDF as a multipart file upload (field `file`), not in JSON",
            ));
        }
        Upload {
            format,
            title: body.title,
            content: body.content,
            source: body.source,
        }
    };
    let ingested = state.knowledge.ingest(&principal.tenant_id, upload).await?;
    let status = if ingested.status == "unchanged" {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(ingested)))
}

/// `GET /v1/knowledge/documents`.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(EDITORS)?;
    let documents = state.store.list_documents(&principal.tenant_id).await?;
    Ok(Json(json!({ "documents": documents })))
}

/// `DELETE /v1/knowledge/documents/{id}`: the document, its chunks and their vectors.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(EDITORS)?;
    if state.knowledge.delete(&principal.tenant_id, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("document"))
    }
}

#[derive(serde::Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    k: Option<usize>,
}

/// `GET /v1/knowledge/search?q=…&k=5`: exactly what the bot would retrieve.
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<SearchParams>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(EDITORS)?;
    let q = params
        .q
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_query", "pass the question as ?q=…"))?;
    let k = params
        .k
        .unwrap_or(state.knowledge.config().k)
        .clamp(1, MAX_K);
    let retrieval = state
        .knowledge
        .retrieve(&principal.tenant_id, &q, k)
        .await?;
    Ok(Json(retrieval))
}

/// `GET /v1/knowledge/settings`: the tenant's relevance floor and grounding policy (the
/// defaults filled in).
pub async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(EDITORS)?;
    let settings = state.knowledge.settings(&principal.tenant_id).await?;
    Ok(Json(json!({ "settings": *settings })))
}

/// `PUT /v1/knowledge/settings`: replaces them (400 `invalid_settings` with the field's path).
pub async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let body = body?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("invalid_settings", "the body is not UTF-8 JSON"))?;
    let settings = crate::knowledge::settings::Settings::parse(text).map_err(|e| {
        ApiError::bad_request(
            "invalid_settings",
            format!("the settings are not valid: {e}"),
        )
    })?;
    state
        .knowledge
        .put_settings(&principal.tenant_id, settings.clone())
        .await?;
    Ok(Json(json!({ "settings": settings })))
}
