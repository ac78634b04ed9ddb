//! The web widget over HTTP: `GET /v1/widget/ws` (the protocol is `docs/widget-protocol.md`),
//! `GET /widget.js`, `GET /demo`, and `GET`/`PUT /v1/widget/settings`.
//!
//! One task per socket. It reads the visitor's frames and the hub's events and writes frames;
//! messages always come from the store, read after the last seq this socket sent, so a socket
//! cannot skip or repeat one whatever the hub says or misses. A visitor's `send` is stored
//! through the ingest gate (deduplicated on the visitor's `client_id`) before it is confirmed.
//!
//! Memory per idle socket is kept small on purpose (see docs/BENCHMARKS.md): tungstenite's read
//! buffer is 4 KiB instead of 128 KiB, frames are written through without a write buffer, and the
//! task holds only ids and counters between events.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use metrics::{counter, gauge};
use rand::Rng;
use rand::distr::Alphanumeric;
use switchboard_channel_widget::hub::HubEvent;
use switchboard_channel_widget::inbound::{client_id_of, normalize};
use switchboard_channel_widget::outbound::WireMessage;
use switchboard_channel_widget::{
    ClientFrame, ServerFrame, VisitorToken, VisitorTokenKey, WidgetSettings,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::core::Role;
use crate::pacer::{Pacer, Rate};
use crate::store::channels::Channel;
use crate::store::now_ms;

/// The widget's script and demo page, built into the binary.
const WIDGET_JS: &str = include_str!("../../widget/widget.js");
const DEMO_HTML: &str = include_str!("../../widget/demo.html");

/// Messages sent per store read when catching a socket up.
const PAGE: i64 = 200;
/// How long a new socket has to say `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the widget sockets share.
pub struct WidgetRuntime {
    tokens: VisitorTokenKey,
    limits: Pacer,
    open_per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Cancelled when the gateway shuts down: sockets close with 1001 (clients reconnect).
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl WidgetRuntime {
    pub fn new(tokens: VisitorTokenKey) -> WidgetRuntime {
        WidgetRuntime {
            tokens,
            limits: Pacer::default(),
            open_per_ip: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    fn lock_ips(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open_per_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes every socket (1001) and waits for them, at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
    }
}

/// Counts an open socket against its IP until dropped.
struct IpSlot {
    runtime: Arc<WidgetRuntime>,
    ip: Option<IpAddr>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut open = self.runtime.lock_ips();
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

/// The client's address, when the server was started with connect info.
pub struct PeerIp(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

#[derive(serde::Deserialize)]
pub struct WsParams {
    key: Option<String>,
}

/// `GET /v1/widget/ws?key=<widget key>`.
pub async fn socket(
    State(state): State<AppState>,
    PeerIp(ip): PeerIp,
    Query(params): Query<WsParams>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let invalid_key = || {
        ApiError::unauthorized(
            "invalid_key",
            "connect with ?key=<widget key> (a tenant's sbw_… key)",
        )
    };
    // The per-address limits come first: a flood of connections costs no database read.
    let ip = ip.map(address_key);
    let runtime = state.widget.clone();
    let limits = &state.config.widget;
    let slot = match ip {
        Some(ip) => {
            let connect = Rate {
                count: 1,
                per: Duration::from_secs(1),
                burst: limits.connect_burst_per_ip.max(1),
            };
            let mut open = runtime.lock_ips();
            let n = open.entry(ip).or_insert(0);
            if *n >= limits.max_sockets_per_ip
                || runtime
                    .limits
                    .reserve(&[(format!("ip/{ip}"), connect)], Duration::ZERO)
                    .is_none()
            {
                if *n == 0 {
                    open.remove(&ip);
                }
                counter!("switchboard_widget_refused_total", "reason" => "rate").increment(1);
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_connections",
                    "too many widget connections from this address; try again shortly",
                ));
            }
            *n += 1;
            drop(open);
            IpSlot {
                runtime: runtime.clone(),
                ip: Some(ip),
            }
        }
        None => IpSlot {
            runtime: runtime.clone(),
            ip: None,
        },
    };
    let key = params
        .key
        .filter(|k| !k.is_empty())
        .ok_or_else(invalid_key)?;
    let principal = state
        .store
        .authenticate(&key)
        .await?
        .filter(|p| p.role == Role::Widget)
        .ok_or_else(invalid_key)?;
    let settings = state.store.widget_settings(&principal.tenant_id).await?;
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    if !settings.allows_origin(origin, &own_origins(&state, &headers)) {
        counter!("switchboard_widget_refused_total", "reason" => "origin").increment(1);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!(
                "pages at {} may not open this tenant's widget; add the origin to allowed_origins in the widget settings",
                origin.unwrap_or("(no Origin header)")
            ),
        ));
    }
    let upgrade = upgrade.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "this endpoint takes a WebSocket upgrade",
        )
    })?;
    let max = limits.max_frame_bytes;
    let tracker = runtime.tracker.clone();
    let session = Session {
        state: state.clone(),
        tenant_id: principal.tenant_id,
        theme: settings.theme(),
        ip,
        _slot: slot,
        frames: tokio::time::Instant::now(),
        channel: None,
        visitor: String::new(),
        conversation: None,
        sent_seq: 0,
        acked_seq: 0,
        heard: Instant::now(),
    };
    Ok(upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(max.max(64 * 1024) * 4)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            // Tracked so that shutdown can wait for the close frames.
            tracker.track_future(session.run(socket))
        }))
}

/// `GET /v1/widget/config?key=<widget key>`: whether the page asking may open this tenant's
/// widget. Browsers do not tell a script why a WebSocket handshake was refused, so the widget asks
/// here after a socket failed before it opened, and tells the visitor (and, in the console, the
/// site owner) instead of reconnecting for ever. Answered to any origin (`Access-Control-Allow-
/// Origin: *`, no credentials): it reveals only whether the caller's own origin is allowed.
pub async fn config(
    State(state): State<AppState>,
    PeerIp(ip): PeerIp,
    Query(params): Query<WsParams>,
    headers: HeaderMap,
) -> Response {
    let open = [
        (ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (CACHE_CONTROL, "no-store"),
    ];
    if let Some(ip) = ip.map(address_key) {
        let burst = state.config.widget.connect_burst_per_ip.max(1);
        let rate = Rate {
            count: 1,
            per: Duration::from_secs(1),
            burst,
        };
        if state
            .widget
            .limits
            .reserve(&[(format!("config/{ip}"), rate)], Duration::ZERO)
            .is_none()
        {
            let err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "too many widget checks from this address; try again shortly",
            );
            return (open, err).into_response();
        }
    }
    let result = async {
        let key = params.key.filter(|k| !k.is_empty()).ok_or_else(|| {
            ApiError::unauthorized(
                "invalid_key",
                "ask with ?key=<widget key> (a tenant's sbw_… key)",
            )
        })?;
        let principal = state
            .store
            .authenticate(&key)
            .await?
            .filter(|p| p.role == Role::Widget)
            .ok_or_else(|| {
                ApiError::unauthorized("invalid_key", "this widget key is unknown or revoked")
            })?;
        let settings = state.store.widget_settings(&principal.tenant_id).await?;
        let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
        // No `Origin`: browsers leave it off a same-origin GET (a page the gateway serves, such
        // as /demo, or a site proxying the gateway under its own origin), so the page's origin
        // is unknown here — `null`, which the widget takes as "cannot tell" and keeps
        // reconnecting; `false` made it disable the chat for good. (The socket's handshake always
        // carries an `Origin`, and is checked there.)
        let allowed =
            origin.map(|o| settings.allows_origin(Some(o), &own_origins(&state, &headers)));
        Ok::<_, ApiError>(Json(serde_json::json!({
            "origin": origin,
            "origin_allowed": allowed,
        })))
    }
    .await;
    match result {
        Ok(body) => (open, body).into_response(),
        Err(err) => (open, err).into_response(),
    }
}

/// The gateway's own origin, always allowed (its `/demo` page): `SWITCHBOARD_PUBLIC_URL` when
/// set; otherwise, as on a developer's machine, the `Host` the browser used (either scheme). With
/// a public URL the `Host` header is not trusted, so a rebinding DNS name cannot pose as us.
fn own_origins(state: &AppState, headers: &HeaderMap) -> Vec<String> {
    if let Some(public) = &state.config.public_url {
        return vec![public.trim_end_matches('/').to_owned()];
    }
    let mut own = Vec::new();
    if let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) {
        own.push(format!("http://{host}"));
        own.push(format!("https://{host}"));
    }
    own
}

/// The key the per-address limits count under: the address, or for IPv6 its /64 (one host
/// usually has a whole /64 to pick addresses from).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        IpAddr::V4(_) => ip,
    }
}

/// Why a session ended, as a close frame.
struct Close(u16, &'static str);

impl Close {
    const SHUTDOWN: Close = Close(1001, "the gateway is restarting; reconnect");
    const BINARY: Close = Close(1003, "binary frames are not part of the protocol");
    const TOO_BIG: Close = Close(1009, "frame too large");
    const INTERNAL: Close = Close(1011, "internal error; reconnect");
    const PROTOCOL: Close = Close(4400, "protocol error");
    const TOKEN: Close = Close(4401, "invalid visitor token; reconnect without it");
    const SILENT: Close = Close(4408, "timed out");
    const SLOW: Close = Close(4409, "too slow to read; reconnect to resume");
    const FLOOD: Close = Close(4429, "too many frames");
}

/// One visitor socket.
struct Session {
    state: AppState,
    tenant_id: String,
    theme: serde_json::Value,
    /// The client's address key (for the per-address send limit).
    ip: Option<IpAddr>,
    _slot: IpSlot,
    /// GCRA state of the per-socket frame budget.
    frames: tokio::time::Instant,
    channel: Option<Channel>,
    visitor: String,
    /// The conversation this socket shows, and the last seq it sent of it.
    conversation: Option<String>,
    sent_seq: i64,
    /// The highest seq the client acknowledged on this socket (in `conversation`).
    acked_seq: i64,
    /// When the client was last heard from (any frame).
    heard: Instant,
}

/// The socket is gone (or must be closed): stop the session.
type Ended = Result<(), Close>;

impl Session {
    async fn run(mut self, mut socket: WebSocket) {
        counter!("switchboard_widget_sessions_total").increment(1);
        gauge!("switchboard_widget_sockets").increment(1.0);
        let close = self.serve(&mut socket).await.err();
        gauge!("switchboard_widget_sockets").decrement(1.0);
        if let Some(Close(code, reason)) = close {
            if code != 1000 {
                tracing::debug!(code, reason, visitor = %self.visitor, "closing widget socket");
            }
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                socket.send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }))),
            )
            .await;
            // The closing handshake: read (and discard) until the client's close, briefly.
            // Dropping a socket with unread input makes the kernel reset the connection, and
            // the client would then never read the close frame and its code.
            let drain = async { while let Some(Ok(_)) = socket.recv().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        }
    }

    async fn serve(&mut self, socket: &mut WebSocket) -> Ended {
        let runtime = self.state.widget.clone();
        let hello = tokio::select! {
            hello = Self::hello(socket) => hello?,
            _ = runtime.shutdown.cancelled() => return Err(Close::SHUTDOWN),
        };
        let ClientFrame::Hello {
            v,
            token,
            conversation_id,
            last_seq,
        } = hello
        else {
            return Err(Close::PROTOCOL);
        };
        if v.is_some_and(|v| v != 1) {
            let frame = ServerFrame::error("bad_frame", "this gateway speaks protocol v1", None);
            send(socket, &frame).await?;
            return Err(Close::PROTOCOL);
        }
        let now = now_ms();
        self.visitor = match token {
            Some(token) => match runtime.tokens.verify(&token, &self.tenant_id, now) {
                Ok(t) => t.visitor_id,
                Err(e) => {
                    let frame = ServerFrame::error("invalid_token", e.to_string(), None);
                    send(socket, &frame).await?;
                    return Err(Close::TOKEN);
                }
            },
            None => new_visitor_id(),
        };
        let channel = self
            .state
            .store
            .widget_channel(&self.tenant_id)
            .await
            .map_err(internal)?;
        // Join the hub before reading the store: whatever is stored after the read is announced.
        let hub = self.state.channels.widget().hub().clone();
        let (mut subscription, snapshot) = hub.subscribe(&self.visitor);
        let current = self
            .state
            .store
            .widget_conversation(&channel.id, &self.visitor)
            .await
            .map_err(internal)?;
        self.channel = Some(channel);
        let heartbeat = Duration::from_millis(self.state.config.widget.heartbeat_ms);
        let token = runtime.tokens.sign(&VisitorToken {
            tenant_id: self.tenant_id.clone(),
            visitor_id: self.visitor.clone(),
            issued_ms: now,
        });
        send(
            socket,
            &ServerFrame::Welcome {
                v: 1,
                token,
                visitor_id: self.visitor.clone(),
                conversation_id: current.as_ref().map(|(id, _)| id.clone()),
                last_seq: current.as_ref().map_or(0, |(_, seq)| *seq),
                heartbeat_ms: heartbeat.as_millis() as u64,
                theme: self.theme.clone(),
            },
        )
        .await?;
        if let Some((id, newest)) = current {
            self.sent_seq = match (conversation_id, last_seq) {
                (Some(c), Some(seq)) if c == id => seq.clamp(0, newest),
                _ => (newest - PAGE).max(0),
            };
            self.conversation = Some(id);
        }
        self.catch_up(socket).await?;
        if snapshot.typing {
            send(socket, &ServerFrame::Typing { on: true }).await?;
        }
        for (stream_id, text) in snapshot.streams {
            let frame = ServerFrame::Stream {
                stream_id: stream_id.to_string(),
                offset: 0,
                delta: text,
            };
            send(socket, &frame).await?;
        }

        let mut ticks = tokio::time::interval(heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.reset();
        let silence = heartbeat.mul_f32(2.4);
        loop {
            tokio::select! {
                frame = socket.recv() => match frame {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(read_error(&e)),
                    Some(Ok(message)) => {
                        self.heard = Instant::now();
                        self.spend_frame()?;
                        self.on_message(socket, message).await?;
                    }
                },
                event = subscription.events.recv() => match event {
                    None => return Err(Close::SLOW),
                    Some(event) => self.on_event(socket, event).await?,
                },
                _ = ticks.tick() => {
                    if self.heard.elapsed() > silence {
                        return Err(Close::SILENT);
                    }
                    let ping = socket.send(Message::Ping(Default::default()));
                    match tokio::time::timeout(SEND_TIMEOUT, ping).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Err(Close(1000, "")),
                        Err(_) => return Err(Close::SLOW),
                    }
                }
                _ = runtime.shutdown.cancelled() => return Err(Close::SHUTDOWN),
            }
        }
    }

    /// Waits for the first frame, which must be `hello`.
    async fn hello(socket: &mut WebSocket) -> Result<ClientFrame, Close> {
        let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
        loop {
            let frame = tokio::time::timeout_at(deadline, socket.recv())
                .await
                .map_err(|_| Close::SILENT)?;
            match frame {
                None => return Err(Close(1000, "")),
                Some(Err(e)) => return Err(read_error(&e)),
                Some(Ok(Message::Text(text))) => {
                    return match ClientFrame::parse(&text) {
                        Ok(hello @ ClientFrame::Hello { .. }) => Ok(hello),
                        Ok(_) => {
                            let frame = ServerFrame::error(
                                "bad_frame",
                                "the first frame must be hello",
                                None,
                            );
                            send(socket, &frame).await?;
                            Err(Close::PROTOCOL)
                        }
                        Err(e) => {
                            send(socket, &ServerFrame::error(e.code, e.message, None)).await?;
                            Err(Close::PROTOCOL)
                        }
                    };
                }
                Some(Ok(Message::Binary(_))) => return Err(Close::BINARY),
                Some(Ok(Message::Close(_))) => return Err(Close(1000, "")),
                Some(Ok(_)) => continue, // ping / pong
            }
        }
    }

    /// Frames a socket may send: 20 a second, bursts of 40. Beyond that the client is broken or
    /// hostile, and the socket is closed (4429).
    fn spend_frame(&mut self) -> Ended {
        const INTERVAL: Duration = Duration::from_millis(50);
        const TOLERANCE: Duration = Duration::from_secs(2);
        let now = tokio::time::Instant::now();
        let tat = self.frames.max(now);
        if tat > now + TOLERANCE {
            counter!("switchboard_widget_refused_total", "reason" => "flood").increment(1);
            return Err(Close::FLOOD);
        }
        self.frames = tat + INTERVAL;
        Ok(())
    }

    async fn on_message(&mut self, socket: &mut WebSocket, message: Message) -> Ended {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => return Err(Close::BINARY),
            Message::Close(_) => return Err(Close(1000, "")),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        let frame = match ClientFrame::parse(&text) {
            Ok(frame) => frame,
            Err(e) => {
                counter!("switchboard_widget_refused_total", "reason" => e.code).increment(1);
                return send(socket, &ServerFrame::error(e.code, e.message, e.client_id)).await;
            }
        };
        match frame {
            ClientFrame::Ping => send(socket, &ServerFrame::Pong).await,
            ClientFrame::Hello { .. } => {
                let frame = ServerFrame::error("bad_frame", "hello was already sent", None);
                send(socket, &frame).await?;
                Err(Close::PROTOCOL)
            }
            ClientFrame::Ack { seq } => {
                // Only acknowledgements that move forward are written (at most one write per
                // message sent), so a client repeating acks cannot load the database.
                if let Some(conversation) = &self.conversation
                    && seq > self.acked_seq
                    && seq <= self.sent_seq
                {
                    self.acked_seq = seq;
                    if let Err(e) = self.state.store.widget_ack(conversation, seq).await {
                        // Statuses are bookkeeping: a failed one must not cost the socket.
                        tracing::warn!(error = %e, "recording a widget acknowledgement failed");
                    }
                }
                Ok(())
            }
            ClientFrame::Send { client_id, text } => self.on_send(socket, client_id, text).await,
        }
    }

    async fn on_send(&mut self, socket: &mut WebSocket, client_id: String, text: String) -> Ended {
        let config = &self.state.config.widget;
        let rate = Rate {
            count: 1,
            per: Duration::from_secs(1),
            burst: config.send_burst.max(1),
        };
        let mut keys = vec![(format!("visitor/{}", self.visitor), rate)];
        if let Some(ip) = self.ip {
            // New visitors cost nothing: the address has a (larger) budget of its own.
            let per_ip = Rate {
                count: 5,
                per: Duration::from_secs(1),
                burst: config.send_burst.max(1) * 3,
            };
            keys.push((format!("send/{ip}"), per_ip));
        }
        if self
            .state
            .widget
            .limits
            .reserve(&keys, Duration::ZERO)
            .is_none()
        {
            counter!("switchboard_widget_refused_total", "reason" => "rate_limited").increment(1);
            let frame = ServerFrame::Error {
                code: "rate_limited".to_owned(),
                message: "too many messages; this one was not stored".to_owned(),
                client_id: Some(client_id),
                retry_after_ms: Some(1_000),
            };
            return send(socket, &frame).await;
        }
        let Some(channel) = self.channel.clone() else {
            return Err(Close::INTERNAL);
        };
        let message = normalize(&self.visitor, &client_id, &text);
        match self.state.ingest.accept(&channel, message).await {
            Ok(stored) => {
                let frame = ServerFrame::Sent {
                    client_id,
                    message_id: stored.message_id,
                    conversation_id: stored.conversation_id,
                    seq: stored.seq,
                    duplicate: stored.duplicate,
                };
                // Every tab of the visitor (this one too) reads the new message from the store.
                self.state.channels.widget().hub().messages(&self.visitor);
                send(socket, &frame).await
            }
            Err(e) => {
                tracing::error!(error = %e, "storing a widget message failed");
                let frame = ServerFrame::error(
                    "internal",
                    "the message could not be stored; send it again",
                    Some(client_id),
                );
                send(socket, &frame).await
            }
        }
    }

    async fn on_event(&mut self, socket: &mut WebSocket, event: HubEvent) -> Ended {
        match event {
            HubEvent::Messages => self.catch_up(socket).await,
            HubEvent::Typing(on) => send(socket, &ServerFrame::Typing { on }).await,
            HubEvent::Stream {
                stream_id,
                offset,
                delta,
            } => {
                let frame = ServerFrame::Stream {
                    stream_id: stream_id.to_string(),
                    offset,
                    delta: delta.to_string(),
                };
                send(socket, &frame).await
            }
            HubEvent::StreamReset { stream_id } => {
                let frame = ServerFrame::StreamReset {
                    stream_id: stream_id.to_string(),
                };
                send(socket, &frame).await
            }
        }
    }

    /// Sends every stored message after the last one sent, in seq order; follows the visitor to
    /// a newer conversation when theirs was closed and another opened.
    async fn catch_up(&mut self, socket: &mut WebSocket) -> Ended {
        loop {
            let Some(conversation) = self.conversation.clone() else {
                if !self.switch_conversation().await? {
                    return Ok(());
                }
                continue;
            };
            let page = self
                .state
                .store
                .widget_messages(&conversation, self.sent_seq, PAGE)
                .await
                .map_err(internal)?;
            let full = page.len() as i64 == PAGE;
            if page.is_empty() {
                if !self.switch_conversation().await? {
                    return Ok(());
                }
                continue;
            }
            for m in page {
                self.sent_seq = m.seq;
                let client_id = m
                    .provider_id
                    .as_deref()
                    .filter(|_| m.direction == "inbound")
                    .and_then(|p| client_id_of(&self.visitor, p))
                    .map(str::to_owned);
                let frame = ServerFrame::Message(WireMessage {
                    conversation_id: m.conversation_id,
                    id: m.id,
                    seq: m.seq,
                    reply_to: m.reply_to.filter(|_| m.direction == "outbound"),
                    direction: m.direction,
                    author: m.author,
                    text: m.text,
                    created_at: m.created_at,
                    client_id,
                    citations: m.citations,
                });
                send(socket, &frame).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Looks for a newer conversation of the visitor; `true` if the socket now shows one.
    async fn switch_conversation(&mut self) -> Result<bool, Close> {
        let Some(channel) = &self.channel else {
            return Ok(false);
        };
        let newest = self
            .state
            .store
            .widget_conversation(&channel.id, &self.visitor)
            .await
            .map_err(internal)?;
        match newest {
            Some((id, _)) if self.conversation.as_deref() != Some(id.as_str()) => {
                self.conversation = Some(id);
                self.sent_seq = 0;
                self.acked_seq = 0;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// How long a frame may take to be written; a client that does not read for this long is closed
/// (4409) so that it holds no task, buffer or address slot.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

async fn send(socket: &mut WebSocket, frame: &ServerFrame) -> Ended {
    match tokio::time::timeout(
        SEND_TIMEOUT,
        socket.send(Message::Text(frame.to_text().into())),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Close(1000, "")),
        Err(_) => Err(Close::SLOW),
    }
}

fn internal(e: sqlx::Error) -> Close {
    tracing::error!(error = %e, "widget session: store error");
    Close::INTERNAL
}

/// A read error as the close it calls for: an oversized frame gets 1009.
fn read_error(e: &axum::Error) -> Close {
    let inner = std::error::Error::source(e);
    let too_big = inner
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)));
    if too_big {
        counter!("switchboard_widget_refused_total", "reason" => "too_big").increment(1);
        Close::TOO_BIG
    } else {
        Close(1000, "")
    }
}

fn new_visitor_id() -> String {
    let body: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(22)
        .map(char::from)
        .collect();
    format!("w_{body}")
}

/// `GET /widget.js`.
pub async fn script() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=300"),
        ],
        WIDGET_JS,
    )
}

/// `GET /demo`: a page embedding the widget of tenant `demo`.
pub async fn demo(State(state): State<AppState>) -> Result<Response, ApiError> {
    let tenant = state
        .store
        .tenant_by_slug("demo")
        .await?
        .ok_or_else(|| ApiError::not_found("tenant demo"))?;
    let key = state.store.public_widget_key(&tenant.id).await?;
    // Widget keys are `sbw_` and alphanumerics: nothing in them needs escaping.
    Ok(Html(DEMO_HTML.replace("{{WIDGET_KEY}}", &key)).into_response())
}

/// `GET /v1/widget/settings` (admin): the settings and the key to embed.
pub async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let settings = state.store.widget_settings(&principal.tenant_id).await?;
    let key = state.store.public_widget_key(&principal.tenant_id).await?;
    Ok(Json(settings_body(&state, &settings, &key)))
}

/// `PUT /v1/widget/settings` (admin): replaces the settings.
pub async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let value: serde_json::Value = super::error::json_body(body, "invalid_settings")?;
    let settings = WidgetSettings::parse(&value)
        .map_err(|e| ApiError::bad_request("invalid_settings", e.to_string()))?;
    state
        .store
        .set_widget_settings(&principal.tenant_id, &settings)
        .await?;
    let key = state.store.public_widget_key(&principal.tenant_id).await?;
    Ok(Json(settings_body(&state, &settings, &key)))
}

fn settings_body(state: &AppState, settings: &WidgetSettings, key: &str) -> serde_json::Value {
    let mut body = serde_json::to_value(settings).unwrap_or_default();
    body["widget_key"] = serde_json::Value::String(key.to_owned());
    // The tag to paste into another site must name this gateway: its public URL when known.
    let base = state
        .config
        .public_url
        .as_deref()
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("http://{}", state.config.listen));
    body["embed"] = serde_json::Value::String(format!(
        "<script src=\"{base}/widget.js\" data-key=\"{key}\"></script>"
    ));
    body
}
