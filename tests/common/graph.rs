//! A local stand-in for the WhatsApp Cloud API's `POST /{version}/{phone_number_id}/messages`,
//! answering like the Graph API (`wamid.out-N` ids); read receipts are recorded apart.

use std::sync::Arc;

use serde_json::{Value, json};

/// What every media download returns.
pub const MEDIA_BYTES: &[u8] = b"\xff\xd8 whatsapp media";

/// What the Graph API stand-in received: (authorization header, body).
pub type Sent = Arc<std::sync::Mutex<Vec<(String, Value)>>>;

/// A local stand-in for `POST /{version}/{phone_number_id}/messages`: records each send and
/// answers like the Graph API, with `wamid.out-N` ids.
pub async fn graph_stand_in() -> (String, Sent) {
    let (base, sent, _) = graph_stand_in_with_reads().await;
    (base, sent)
}

/// The same, also returning the read receipts (`"status":"read"` calls) it received.
pub async fn graph_stand_in_with_reads() -> (String, Sent, Sent) {
    use axum::extract::{Path, State};
    use axum::http::HeaderMap;
    async fn messages(
        State((sent, reads)): State<(Sent, Sent)>,
        Path((_version, phone)): Path<(String, String)>,
        headers: HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> axum::Json<Value> {
        if body["status"] == "read" {
            reads.lock().expect("lock").push((String::new(), body));
            return axum::Json(json!({ "success": true }));
        }
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut sent = sent.lock().expect("lock");
        sent.push((auth, body.clone()));
        assert!(
            phone == "1122334455667" || phone == "2233445566778",
            "{phone}"
        );
        axum::Json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": body["to"], "wa_id": body["to"] }],
            "messages": [{ "id": format!("wamid.out-{}", sent.len()) }]
        }))
    }
    let sent: Sent = Arc::default();
    let reads: Sent = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}/v21.0", listener.local_addr().expect("addr"));
    let media_base = base.clone();
    let app =
        axum::Router::new()
            .route("/{version}/{phone}/messages", axum::routing::post(messages))
            // Media: `GET /{version}/{media_id}` gives a URL, which serves the bytes (bearer only).
            .route(
                "/{version}/{media_id}",
                axum::routing::get(
                    move |axum::extract::Path((_v, id)): axum::extract::Path<(String, String)>| {
                        let url = format!("{media_base}/media/{id}");
                        async move {
                            axum::Json(json!({ "url": url, "mime_type": "image/jpeg", "id": id }))
                        }
                    },
                ),
            )
            .route(
                "/{version}/media/{media_id}",
                axum::routing::get(|headers: axum::http::HeaderMap| async move {
                    if headers.get("authorization").is_none() {
                        return (axum::http::StatusCode::UNAUTHORIZED, Vec::new());
                    }
                    (axum::http::StatusCode::OK, MEDIA_BYTES.to_vec())
                }),
            )
            .with_state((sent.clone(), reads.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, sent, reads)
}
