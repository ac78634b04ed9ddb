//! The channel registry: one home per channel kind.
//!
//! Where it sits: between the core (webhooks, connect, outbox, router, attachments, sealing) and
//! the adapter crates under `channels/`. Everything the core needs to know about a kind — how
//! its configuration parses and which of its fields are secrets, how a webhook is verified and
//! read and answered, how a reply is sent and paced, how a turn is acknowledged, what content
//! it can render, how an attachment is fetched — is reached through [`Adapter`], and
//! [`Channels::adapter`] is the only place a kind is mapped to its adapter. A new channel is its
//! crate under `channels/` plus one `impl Adapter` here and one line in [`Channels::new`].
//!
//! What stays outside: Telegram's long polling (a subsystem with its own tasks, `polling.rs`)
//! and the widget's WebSocket endpoint (`http/widget.rs`), which are transports, not adapters.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::HeaderMap;
use serde_json::{Map, Value};
use switchboard_channel::egress::EgressPolicy;
use switchboard_channel::{
    Attachment, ChannelKind, Content, InboundError, InboundEvent, OutboundMessage, Receipt,
    SendError,
};
use switchboard_channel_api::{ApiChannelConfig, ApiSender};
use switchboard_channel_email::{EmailConfig, EmailSender, Thread};
use switchboard_channel_sms::{SmsConfig, SmsSender};
use switchboard_channel_telegram::{BotIdentity, Mode, TelegramConfig, TelegramSender};
use switchboard_channel_whatsapp::{WhatsappConfig, WhatsappSender};
use switchboard_channel_widget::{Hub, WidgetSender};

use crate::http::error::ApiError;
use crate::pacer::{Rate, WHATSAPP_PER_NUMBER};
use crate::store::channels::Channel;

/// Config fields that hold credentials, in any kind (sealed at rest by field name).
pub fn secret_fields() -> impl Iterator<Item = &'static str> {
    [
        API_SECRETS,
        TELEGRAM_SECRETS,
        WHATSAPP_SECRETS,
        SMS_SECRETS,
        EMAIL_SECRETS,
    ]
    .into_iter()
    .flatten()
    .copied()
}

const API_SECRETS: &[&str] = &["signing_secret"];
const TELEGRAM_SECRETS: &[&str] = &["bot_token", "webhook_secret"];
const WHATSAPP_SECRETS: &[&str] = &["access_token", "app_secret", "verify_token"];
const SMS_SECRETS: &[&str] = &["auth_token", "api_key_secret"];
const EMAIL_SECRETS: &[&str] = &["smtp_url", "mailgun_signing_key", "inbound_secret"];

/// One provider request to `/webhooks/{kind}/{channel_id}`, as it arrived.
pub struct WebhookRequest<'a> {
    pub channel: &'a Channel,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The path and query the provider called (`/webhooks/sms/…?…`).
    pub path_and_query: &'a str,
    /// `SWITCHBOARD_PUBLIC_URL`: the address providers call, for signatures over the URL.
    pub public_url: Option<&'a str>,
}

/// What a verified webhook carried.
#[derive(Debug, Default)]
pub struct Received {
    pub events: Vec<InboundEvent>,
    /// A one-time value the provider signed (Mailgun's token): a request that repeats one is
    /// refused as a replay.
    pub replay_key: Option<String>,
    /// Keep the request itself with the messages it carried (email: the full original).
    pub keep_original: bool,
    /// How the provider wants to be answered once everything is stored.
    pub reply: Reply,
}

/// The body of a webhook's 2xx answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `{"messages":…,"statuses":…,"notices":…}`.
    #[default]
    Counts,
    /// An empty TwiML document (`<Response/>`): Twilio then sends nothing itself.
    EmptyTwiml,
}

/// A configuration checked for storing.
#[derive(Debug)]
pub struct Configured {
    /// What to store (normalized: defaults filled in, learned values added).
    pub config: Value,
    /// What makes two configurations the same account (the bot, the number, the address): a
    /// new connection with the same identity replaces the existing channel.
    pub identity: Option<String>,
    /// What the tenant should know about the connection (added to the answer).
    pub notes: Map<String, Value>,
    /// Telegram: `getMe` failed; learn the username in the background.
    pub learn_username: bool,
}

/// How a turn is acknowledged to the person while the answer is prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledgement {
    None,
    /// At once ([`Adapter::acknowledge`]: WhatsApp's read receipt with its typing
    /// indicator).
    Once,
    /// At once, for a message that carries attachments, what cannot wait
    /// ([`Adapter::acknowledge`]: a pressed button's spinner stopped); and an activity
    /// indicator ([`Adapter::indicate`]) only when the answer is not ready `after` the turn
    /// started, renewed every `every` from the start until it is (Telegram's typing action,
    /// which shows for 5 s). Telegram recommends the action only "when a response from the bot
    /// will take a noticeable amount of time to arrive": an answer ready at once costs no call.
    Indicator {
        after: Duration,
        every: Duration,
    },
}

/// How long an answer may take before Telegram shows "typing…".
pub const TELEGRAM_TYPING_AFTER: Duration = Duration::from_millis(500);

/// What a send needs besides the message: where status reports go, how an email threads.
#[derive(Debug, Default, Clone)]
pub struct SendContext {
    /// The conversation's email thread: subject, the contact's last Message-ID.
    pub thread: Option<ThreadInfo>,
    /// A proactive (program) message rather than an answer or an agent's reply.
    pub proactive: bool,
}

/// A conversation's email thread, as stored.
#[derive(Debug, Default, Clone)]
pub struct ThreadInfo {
    pub subject: Option<String>,
    /// The Message-IDs the reply answers, newest first (the contact's last mail first).
    pub references: Vec<String>,
}

/// A stored config that no longer parses is our fault, not the provider's.
fn stored<T>(channel: &Channel, parsed: Result<T, String>) -> Result<T, ApiError> {
    parsed.map_err(|e| ApiError::internal(format!("{} channel {}: {e}", channel.kind, channel.id)))
}

fn invalid(e: String) -> ApiError {
    ApiError::bad_request("invalid_channel_config", e)
}

/// A provider refused or mangled a request: 401 or 400, nothing stored.
pub fn refused(e: InboundError) -> ApiError {
    match e {
        InboundError::Unauthorized(m) => ApiError::unauthorized("invalid_signature", m),
        InboundError::Malformed(m) => ApiError::bad_request("invalid_payload", m),
    }
}

fn config_error(kind: ChannelKind) -> impl Fn(String) -> SendError {
    move |e| SendError::Permanent(format!("{kind} channel config: {e}"))
}

/// One channel kind's behaviour.
#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    fn kind(&self) -> ChannelKind;

    /// The config fields a tenant sets that are URLs we call (checked against the egress
    /// policy when the channel is connected; sends are checked again when they connect).
    fn url_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether `POST /v1/channels` and `PATCH`/`DELETE /v1/channels/{id}` manage this kind
    /// (`api` and `widget` are the tenant's own, configured elsewhere).
    fn connectable(&self) -> bool {
        true
    }

    /// Checks a configuration for storing; the error (a 400) names the field.
    async fn configure(&self, config: Value) -> Result<Configured, ApiError>;

    /// The identity of a stored configuration (see [`Configured::identity`]).
    fn identity(&self, _config: &Value) -> Option<String> {
        None
    }

    /// Whether the provider must be told our webhook URL (a warning when we cannot know it).
    fn needs_webhook(&self, _config: &Value) -> bool {
        false
    }

    /// Registers (`Some(url)`) or removes (`None`) our webhook at the provider, for kinds that
    /// do that through their API. `None` when the kind has nothing to register.
    async fn register_webhook(
        &self,
        _config: &Value,
        _url: Option<&str>,
    ) -> Option<Result<(), SendError>> {
        None
    }

    /// What to tell a tenant who must register the webhook themselves because
    /// `SWITCHBOARD_PUBLIC_URL` is not set (kinds that [`Adapter::register_webhook`]).
    fn unregistered_webhook_note(&self) -> Option<&'static str> {
        None
    }

    /// What a channel listing shows of a configuration besides its kind and id (never a
    /// credential).
    fn describe(&self, _config: &Value) -> Map<String, Value> {
        Map::new()
    }

    /// What the tenant should know about a configuration (listed with the channel).
    fn warnings(&self, _config: &Value) -> Vec<String> {
        Vec::new()
    }

    /// Meta-style subscription handshake (`GET` with `hub.challenge`): the challenge to echo.
    fn handshake(
        &self,
        _channel: &Channel,
        _mode: Option<&str>,
        _token: Option<&str>,
        _challenge: Option<&str>,
    ) -> Result<String, ApiError> {
        Err(ApiError::not_found("channel"))
    }

    /// Verifies a webhook request and reads its events. Writes nothing.
    async fn receive(&self, request: &WebhookRequest<'_>) -> Result<Received, ApiError> {
        let _ = request;
        Err(ApiError::not_found("channel"))
    }

    /// Sends one message (or the rest of it, after `msg.parts_sent` parts).
    async fn send(
        &self,
        channel: &Channel,
        msg: &OutboundMessage,
        context: &SendContext,
    ) -> Result<Receipt, SendError>;

    /// Whether a send needs the conversation's email thread ([`SendContext::thread`]).
    fn threads(&self) -> bool {
        false
    }

    /// Whether a send needs when the contact last wrote (WhatsApp's 24-hour window).
    fn needs_last_inbound(&self) -> bool {
        false
    }

    /// Whether the provider reports unreachable contacts, so sends to them are not attempted.
    fn tracks_reachability(&self) -> bool {
        false
    }

    fn acknowledgement(&self) -> Acknowledgement {
        Acknowledgement::None
    }

    /// Acknowledges a turn (best effort): a read receipt, a pressed button answered (see
    /// [`Acknowledgement`]).
    async fn acknowledge(
        &self,
        _config: &Value,
        _to: &str,
        _provider_id: Option<&str>,
        _attachments: &[Attachment],
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// Shows `to` that an answer is being prepared (best effort; see
    /// [`Acknowledgement::Indicator`]).
    async fn indicate(&self, _config: &Value, _to: &str) -> anyhow::Result<()> {
        Ok(())
    }

    /// Whether this kind can show `text` with `content`; the error says what it cannot.
    fn check_renderable(&self, _text: &str, content: &Content) -> Result<(), String> {
        if content.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the {} channel shows text only (no buttons, lists, media or templates)",
                self.kind()
            ))
        }
    }

    /// The provider's rate limits one send to `recipient` falls under, as `(key, rate)`.
    fn limits(&self, _channel: &Channel, _recipient: &str) -> Vec<(String, Rate)> {
        Vec::new()
    }

    /// Whether a keyword reply (`/stop`, `/start`, `/help`) is the provider's to send: on SMS,
    /// Twilio answers STOP/START/HELP itself and refuses our messages to an opted-out number.
    fn provider_answers_keywords(&self, _config: &Value) -> bool {
        false
    }

    /// The file behind an attachment. `original` is the request the message came in (kept for
    /// kinds that [`Received::keep_original`]).
    async fn download(
        &self,
        _channel: &Channel,
        _attachment: &Attachment,
        _index: usize,
        _original: Option<&StoredOriginal>,
    ) -> Option<Result<Vec<u8>, SendError>> {
        None
    }
}

/// A webhook request kept with its messages.
#[derive(Debug, Clone)]
pub struct StoredOriginal {
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// The registry: every kind's adapter. Cheap to clone.
#[derive(Clone)]
pub struct Channels {
    api: Arc<ApiAdapter>,
    widget: Arc<WidgetAdapter>,
    telegram: Arc<TelegramAdapter>,
    whatsapp: Arc<WhatsappAdapter>,
    sms: Arc<SmsAdapter>,
    email: Arc<EmailAdapter>,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Channels")
    }
}

impl Channels {
    /// `http` must be built with `egress`'s policy (`egress::client_builder`); adapters with
    /// their own clients (Telegram's library, SMTP) get the same policy.
    pub fn new(
        http: reqwest::Client,
        egress: EgressPolicy,
        public_url: Option<String>,
    ) -> anyhow::Result<Channels> {
        Ok(Channels {
            api: Arc::new(ApiAdapter(ApiSender::new(http.clone()))),
            sms: Arc::new(SmsAdapter {
                sender: SmsSender::new(http.clone()),
                public_url,
            }),
            email: Arc::new(EmailAdapter {
                sender: EmailSender::new(egress.clone()),
                egress: egress.clone(),
            }),
            widget: Arc::new(WidgetAdapter(WidgetSender::new(Hub::default()))),
            whatsapp: Arc::new(WhatsappAdapter(WhatsappSender::new(http.clone()))),
            telegram: Arc::new(TelegramAdapter(
                TelegramSender::new(http, egress).map_err(anyhow::Error::msg)?,
            )),
        })
    }

    /// The adapter of a kind: the one place a kind is mapped to its behaviour.
    pub fn adapter(&self, kind: ChannelKind) -> Option<&dyn Adapter> {
        match kind {
            ChannelKind::Api => Some(self.api.as_ref()),
            ChannelKind::Widget => Some(self.widget.as_ref()),
            ChannelKind::Telegram => Some(self.telegram.as_ref()),
            ChannelKind::Whatsapp => Some(self.whatsapp.as_ref()),
            ChannelKind::Sms => Some(self.sms.as_ref()),
            ChannelKind::Email => Some(self.email.as_ref()),
        }
    }

    /// The adapter of a kind, or the 400 a tenant gets for a kind this build lacks.
    pub fn available(&self, kind: ChannelKind) -> Result<&dyn Adapter, ApiError> {
        self.adapter(kind).ok_or_else(|| {
            ApiError::bad_request(
                "channel_unavailable",
                format!("the {kind} channel is not available in this build"),
            )
        })
    }

    /// The web widget's sender, and through it the hub of open widget sockets.
    pub fn widget(&self) -> &WidgetSender {
        &self.widget.0
    }

    /// Telegram's client, for the long-polling subsystem.
    pub fn telegram(&self) -> &TelegramSender {
        &self.telegram.0
    }

    /// Sends through the channel's kind.
    pub async fn send(
        &self,
        channel: &Channel,
        msg: &OutboundMessage,
        context: &SendContext,
    ) -> Result<Receipt, SendError> {
        match self.adapter(channel.kind) {
            Some(adapter) => adapter.send(channel, msg, context).await,
            None => Err(SendError::Permanent(format!(
                "the {} channel is not available in this build",
                channel.kind
            ))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// api: POST /v1/messages in, a signed callback out.

struct ApiAdapter(ApiSender);

#[async_trait]
impl Adapter for ApiAdapter {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Api
    }

    fn url_fields(&self) -> &'static [&'static str] {
        &["callback_url"]
    }

    fn connectable(&self) -> bool {
        false
    }

    async fn configure(&self, config: Value) -> Result<Configured, ApiError> {
        ApiChannelConfig::parse(&config).map_err(invalid)?;
        Ok(Configured {
            config,
            identity: None,
            notes: Map::new(),
            learn_username: false,
        })
    }

    async fn send(
        &self,
        channel: &Channel,
        msg: &OutboundMessage,
        _context: &SendContext,
    ) -> Result<Receipt, SendError> {
        let config = ApiChannelConfig::parse(&channel.config).map_err(config_error(self.kind()))?;
        self.0.send(&config, msg).await
    }

    fn check_renderable(&self, _text: &str, _content: &Content) -> Result<(), String> {
        // The callback receives the content as JSON: whatever it is, the receiver renders it.
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// widget: WebSocket frames to the visitor's open sockets.

struct WidgetAdapter(WidgetSender);

#[async_trait]
impl Adapter for WidgetAdapter {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Widget
    }

    fn connectable(&self) -> bool {
        false
    }

    async fn configure(&self, _config: Value) -> Result<Configured, ApiError> {
        Err(ApiError::bad_request(
            "channel_unavailable",
            "the widget channel is configured with PUT /v1/widget/settings",
        ))
    }

    async fn send(
        &self,
        _channel: &Channel,
        msg: &OutboundMessage,
        _context: &SendContext,
    ) -> Result<Receipt, SendError> {
        self.0.send(msg)
    }

    fn check_renderable(&self, _text: &str, content: &Content) -> Result<(), String> {
        if content.is_empty() {
            Ok(())
        } else {
            Err("the web widget shows text only (no buttons, lists, media or templates)".into())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// telegram: Bot API.

struct TelegramAdapter(TelegramSender);

#[async_trait]
impl Adapter for TelegramAdapter {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Telegram
    }

    fn url_fields(&self) -> &'static [&'static str] {
        &["api_url"]
    }

    async fn configure(&self, config: Value) -> Result<Configured, ApiError> {
        let mut parsed = TelegramConfig::parse(&config).map_err(invalid)?;
        let mut notes = Map::new();
        let mut learn_username = false;
        // getMe proves the token and tells the bot's @username (groups address it by that).
        match self.0.username(&parsed).await {
            Ok(name) => parsed.bot_username = name,
            Err(SendError::Permanent(reason)) => {
                return Err(invalid(format!("Telegram refused the bot token: {reason}")));
            }
            Err(e) => {
                tracing::warn!(error = %e, "getMe failed; retried in the background, group mentions are recognised once it works");
                notes.insert("get_me_error".into(), e.to_string().into());
                learn_username = true;
            }
        }
        Ok(Configured {
            identity: parsed.bot_id().map(|id| id.to_string()),
            config: serde_json::to_value(&parsed).map_err(ApiError::internal)?,
            notes,
            learn_username,
        })
    }

    fn identity(&self, config: &Value) -> Option<String> {
        TelegramConfig::parse(config)
            .ok()?
            .bot_id()
            .map(|id| id.to_string())
    }

    fn needs_webhook(&self, config: &Value) -> bool {
        TelegramConfig::parse(config).is_ok_and(|c| c.mode == Mode::Webhook)
    }

    async fn register_webhook(
        &self,
        config: &Value,
        url: Option<&str>,
    ) -> Option<Result<(), SendError>> {
        let parsed = TelegramConfig::parse(config).ok()?;
        Some(match url {
            Some(url) => self.0.set_webhook(&parsed, url).await,
            None => self.0.delete_webhook(&parsed).await,
        })
    }

    fn unregistered_webhook_note(&self) -> Option<&'static str> {
        Some(
            "SWITCHBOARD_PUBLIC_URL is not set: register webhook_url with setWebhook yourself, or use mode \"polling\"",
        )
    }

    fn describe(&self, config: &Value) -> Map<String, Value> {
        let mut out = Map::new();
        if let Ok(parsed) = TelegramConfig::parse(config) {
            out.insert("bot_username".into(), parsed.bot_username.clone().into());
            let mode = match parsed.mode {
                Mode::Webhook => "webhook",
                Mode::Polling => "polling",
            };
            out.insert("mode".into(), mode.into());
        }
        out
    }

    fn warnings(&self, config: &Value) -> Vec<String> {
        if TelegramConfig::parse(config).is_ok_and(|c| c.bot_username.is_none()) {
            vec!["getMe has not succeeded yet (it is retried in the background): group messages that address the bot by @username are not recognised until it does".into()]
        } else {
            Vec::new()
        }
    }

    async fn receive(&self, request: &WebhookRequest<'_>) -> Result<Received, ApiError> {
        let channel = request.channel;
        let config = stored(channel, TelegramConfig::parse(&channel.config))?;
        // A polling channel takes no webhook.
        let secret = config
            .webhook_secret
            .as_ref()
            .filter(|_| config.mode == Mode::Webhook)
            .ok_or_else(|| ApiError::not_found("channel"))?;
        let token = request
            .headers
            .get(switchboard_channel_telegram::inbound::SECRET_HEADER)
            .and_then(|v| v.to_str().ok());
        switchboard_channel_telegram::verify_secret(secret, token).map_err(refused)?;
        let bot = BotIdentity {
            id: config.bot_id(),
            username: config.bot_username.as_deref(),
        };
        let events =
            switchboard_channel_telegram::parse_webhook(request.body, bot).map_err(refused)?;
        Ok(Received {
            events,
            ..Received::default()
        })
    }

    async fn send(
        &self,
        channel: &Channel,
        msg: &OutboundMessage,
        _context: &SendContext,
    ) -> Result<Receipt, SendError> {
        let config = TelegramConfig::parse(&channel.config).map_err(config_error(self.kind()))?;
        self.0.send(&config, msg).await
    }

    fn tracks_reachability(&self) -> bool {
        true
    }

    fn acknowledgement(&self) -> Acknowledgement {
        // The typing action shows for 5 s.
        Acknowledgement::Indicator {
            after: TELEGRAM_TYPING_AFTER,
            every: Duration::from_secs(4),
        }
    }

    async fn acknowledge(
        &self,
        config: &Value,
        _to: &str,
        _provider_id: Option<&str>,
        attachments: &[Attachment],
    ) -> anyhow::Result<()> {
        // A pressed button shows a spinner until it is answered.
        if let Some(callback) = attachments.iter().find(|a| a.kind == "callback_query") {
            let config = TelegramConfig::parse(config).map_err(anyhow::Error::msg)?;
            self.0.answer_callback(&config, &callback.reference).await?;
        }
        Ok(())
    }

    async fn indicate(&self, config: &Value, to: &str) -> anyhow::Result<()> {
        let config = TelegramConfig::parse(config).map_err(anyhow::Error::msg)?;
        self.0.typing(&config, to).await?;
        Ok(())
    }

    fn check_renderable(&self, _text: &str, content: &Content) -> Result<(), String> {
        if content.template.is_some() {
            return Err("templates are a WhatsApp feature; Telegram has none".into());
        }
        let too_long = content
            .buttons
            .iter()
            .filter(|b| b.url.is_none())
            .map(|b| b.id.as_str())
            .chain(
                content
                    .list
                    .iter()
                    .flat_map(|l| &l.sections)
                    .flat_map(|s| &s.rows)
                    .map(|r| r.id.as_str()),
            )
            .find(|id| id.len() > switchboard_channel_telegram::outbound::MAX_CALLBACK_DATA);
        match too_long {
            Some(id) => Err(format!(
                "button id {id:?} is longer than Telegram's 64 bytes of callback data"
            )),
            None => Ok(()),
        }
    }

    fn limits(&self, channel: &Channel, recipient: &str) -> Vec<(String, Rate)> {
        crate::pacer::telegram(&channel.id, recipient)
    }

    async fn download(
        &self,
        channel: &Channel,
        attachment: &Attachment,
        _index: usize,
        _original: Option<&StoredOriginal>,
    ) -> Option<Result<Vec<u8>, SendError>> {
        let config = match TelegramConfig::parse(&channel.config) {
            Ok(config) => config,
            Err(e) => return Some(Err(config_error(self.kind())(e))),
        };
        Some(self.0.download(&config, &attachment.reference).await)
    }
}

// ---------------------------------------------------------------------------------------------
// whatsapp: Cloud API.

struct WhatsappAdapter(WhatsappSender);

#[async_trait]
impl Adapter for WhatsappAdapter {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Whatsapp
    }

    fn url_fields(&self) -> &'static [&'static str] {
        &["graph_url"]
    }

    async fn configure(&self, config: Value) -> Result<Configured, ApiError> {
        let parsed = WhatsappConfig::parse(&config).map_err(invalid)?;
        Ok(Configured {
            identity: Some(parsed.phone_number_id),
            config,
            notes: Map::new(),
            learn_username: false,
        })
    }

    fn identity(&self, config: &Value) -> Option<String> {
        WhatsappConfig::parse(config)
            .ok()
            .map(|c| c.phone_number_id)
    }

    fn needs_webhook(&self, _config: &Value) -> bool {
        true
    }

    fn handshake(
        &self,
        channel: &Channel,
        mode: Option<&str>,
        token: Option<&str>,
        challenge: Option<&str>,
    ) -> Result<String, ApiError> {
        let config = stored(channel, WhatsappConfig::parse(&channel.config))?;
        switchboard_channel_whatsapp::verify_subscription(
            mode,
            token,
            challenge,
            &config.verify_token,
        )
        .ok_or_else(|| ApiError::forbidden("hub.verify_token does not match"))
    }

    async fn receive(&self, request: &WebhookRequest<'_>) -> Result<Received, ApiError> {
        let channel = request.channel;
        let config = stored(channel, WhatsappConfig::parse(&channel.config))?;
        let signature = request
            .headers
            .get(switchboard_channel_whatsapp::inbound::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        switchboard_channel_whatsapp::verify_signature(&config.app_secret, signature, request.body)
            .map_err(refused)?;
        let events = switchboard_channel_whatsapp::parse_webhook_for(
            request.body,
            Some(&config.phone_number_id),
        )
        .map_err(refused)?;
        Ok(Received {
            events,
            ..Received::default()
        })
    }

    async fn send(
        &self,
        channel: &Channel,
        msg: &OutboundMessage,
        _context: &SendContext,
    ) -> Result<Receipt, SendError> {
        let config = WhatsappConfig::parse(&channel.config).map_err(config_error(self.kind()))?;
        self.0.send(&config, msg).await
    }

    fn needs_last_inbound(&self) -> bool {
        true
    }

    fn tracks_reachability(&self) -> bool {
        true
    }

    fn acknowledgement(&self) -> Acknowledgement {
        Acknowledgement::Once
    }

    async fn acknowledge(
        &self,
        config: &Value,
        _to: &str,
        provider_id: Option<&str>,
        _attachments: &[Attachment],
    ) -> anyhow::Result<()> {
        let config = WhatsappConfig::parse(config).map_err(anyhow::Error::msg)?;
        if let Some(id) = provider_id {
            self.0.mark_read(&config, id).await?;
        }
        Ok(())
    }

    fn check_renderable(&self, text: &str, content: &Content) -> Result<(), String> {
        if content.template.is_none() {
            switchboard_channel_whatsapp::outbound::rich_body("0", text, content)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn limits(&self, channel: &Channel, _recipient: &str) -> Vec<(String, Rate)> {
        vec![(channel.id.clone(), WHATSAPP_PER_NUMBER)]
    }

    async fn download(
        &self,
        channel: &Channel,
        attachment: &Attachment,
        _index: usize,
        _original: Option<&StoredOriginal>,
    ) -> Option<Result<Vec<u8>, SendError>> {
        let config = match WhatsappConfig::parse(&channel.config) {
            Ok(config) => config,
            Err(e) => return Some(Err(config_error(self.kind())(e))),
        };
        Some(self.0.download(&config, &attachment.reference).await)
    }
}

// ---------------------------------------------------------------------------------------------
// sms: Twilio Programmable Messaging.

struct SmsAdapter {
    sender: SmsSender,
    public_url: Option<String>,
}

impl SmsAdapter {
    fn config(channel: &Channel) -> Result<SmsConfig, SendError> {
        SmsConfig::parse(&channel.config).map_err(config_error(ChannelKind::Sms))
    }
}

#[async_trait]
impl Adapter for SmsAdapter {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Sms
    }

    fn url_fields(&self) -> &'static [&'static str] {
        &["api_url"]
    }

    async fn configure(&self, config: Value) -> Result<Configured, ApiError> {
        let parsed = SmsConfig::parse(&config).map_err(invalid)?;
        let sender = parsed
            .messaging_service_sid
            .clone()
            .or_else(|| parsed.from.clone())
            .unwrap_or_default();
        Ok(Configured {
            identity: Some(format!("{}/{sender}", parsed.account_sid)),
            config,
            notes: Map::new(),
            learn_username: false,
        })
    }

    fn identity(&self, config: &Value) -> Option<String> {
        let parsed = SmsConfig::parse(config).ok()?;
        let sender = parsed
            .messaging_service_sid
            .clone()
            .or_else(|| parsed.from.clone())
            .unwrap_or_default();
        Some(format!("{}/{sender}", parsed.account_sid))
    }

    fn needs_webhook(&self, _config: &Value) -> bool {
        true
    }

    async fn receive(&self, request: &WebhookRequest<'_>) -> Result<Received, ApiError> {
        let channel = request.channel;
        let config = stored(channel, SmsConfig::parse(&channel.config))?;
        // Twilio signs the URL it called: ours from configuration, never from the request's
        // (forgeable) Host or X-Forwarded-* headers.
        let Some(base) = request.public_url else {
            return Err(refused(InboundError::Unauthorized(
                "SWITCHBOARD_PUBLIC_URL is not set: Twilio signs the public URL it calls, which only configuration can tell".into(),
            )));
        };
        let url = format!("{}{}", base.trim_end_matches('/'), request.path_and_query);
        let signature = request
            .headers
            .get(switchboard_channel_sms::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        config
            .verify(&url, signature, request.body)
            .map_err(refused)?;
        let events = switchboard_channel_sms::parse_webhook(request.body).map_err(refused)?;
        Ok(Received {
            events,
            reply: Reply::EmptyTwiml,
            ..Received::default()
        })
    }

    async fn send(
        &self,
        channel: &Channel,
        msg: &OutboundMessage,
        _context: &SendContext,
    ) -> Result<Receipt, SendError> {
        let config = Self::config(channel)?;
        // Status reports come back to the channel's webhook (when we know our address).
        let callback = self
            .public_url
            .as_deref()
            .map(|base| format!("{}/webhooks/sms/{}", base.trim_end_matches('/'), channel.id));
        self.sender.send(&config, msg, callback.as_deref()).await
    }

    fn tracks_reachability(&self) -> bool {
        true
    }

    fn check_renderable(&self, text: &str, content: &Content) -> Result<(), String> {
        switchboard_channel_sms::render(text, content).map(|_| ())
    }

    fn limits(&self, channel: &Channel, _recipient: &str) -> Vec<(String, Rate)> {
        let mps = SmsConfig::parse(&channel.config).map_or(1.0, |c| c.mps);
        crate::pacer::per_second(&channel.id, mps)
    }

    fn provider_answers_keywords(&self, config: &Value) -> bool {
        SmsConfig::parse(config).is_ok_and(|c| c.handles_keywords)
    }

    async fn download(
        &self,
        channel: &Channel,
        attachment: &Attachment,
        _index: usize,
        _original: Option<&StoredOriginal>,
    ) -> Option<Result<Vec<u8>, SendError>> {
        let config = match Self::config(channel) {
            Ok(config) => config,
            Err(e) => return Some(Err(e)),
        };
        Some(self.sender.download(&config, &attachment.reference).await)
    }
}

// ---------------------------------------------------------------------------------------------
// email: Mailgun routes, SendGrid Inbound Parse and raw RFC 5322 in; SMTP out.

struct EmailAdapter {
    sender: EmailSender,
    egress: EgressPolicy,
}

#[async_trait]
impl Adapter for EmailAdapter {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Email
    }

    async fn configure(&self, config: Value) -> Result<Configured, ApiError> {
        let parsed = EmailConfig::parse(&config).map_err(invalid)?;
        // The SMTP server a tenant names must not be on our own network (unless allowed).
        if let Some(target) = parsed.smtp_target().map_err(invalid)? {
            switchboard_channel::egress::resolve(&self.egress, &target.host)
                .await
                .map_err(|e| ApiError::bad_request("egress_refused", format!("smtp_url: {e}")))?;
        }
        Ok(Configured {
            identity: Some(from_address(&parsed)),
            config,
            notes: Map::new(),
            learn_username: false,
        })
    }

    fn identity(&self, config: &Value) -> Option<String> {
        EmailConfig::parse(config).ok().map(|c| from_address(&c))
    }

    fn needs_webhook(&self, config: &Value) -> bool {
        EmailConfig::parse(config)
            .is_ok_and(|c| c.mailgun_signing_key.is_some() || c.inbound_secret.is_some())
    }

    async fn receive(&self, request: &WebhookRequest<'_>) -> Result<Received, ApiError> {
        let channel = request.channel;
        let config = stored(channel, EmailConfig::parse(&channel.config))?;
        let header = |name| {
            request
                .headers
                .get(name)
                .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
        };
        let now = crate::store::now_ms() / 1000;
        let inbound = switchboard_channel_email::parse(
            &config,
            header(axum::http::header::CONTENT_TYPE),
            header(axum::http::header::AUTHORIZATION),
            request.body,
            now,
        )
        .map_err(refused)?;
        let replay_key = inbound.replay_key.clone();
        let mut events = switchboard_channel_email::events(&inbound);
        // A mail with nothing but a subject ("unsubscribe" to our List-Unsubscribe mailto, a
        // one-line question) is its subject.
        for event in &mut events {
            if let InboundEvent::Mail(mail) = event
                && mail.message.text.trim().is_empty()
                && let Some(subject) = &mail.subject
            {
                mail.message.text = subject.clone();
            }
        }
        Ok(Received {
            events,
            replay_key,
            keep_original: true,
            reply: Reply::Counts,
        })
    }

    async fn send(
        &self,
        channel: &Channel,
        msg: &OutboundMessage,
        context: &SendContext,
    ) -> Result<Receipt, SendError> {
        let config = EmailConfig::parse(&channel.config).map_err(config_error(self.kind()))?;
        let info = context.thread.clone().unwrap_or_default();
        let thread = Thread {
            subject: info.subject,
            in_reply_to: info.references.first().cloned(),
            // Oldest first, as the header lists them.
            references: info.references.iter().rev().cloned().collect(),
            proactive: context.proactive,
            unsubscribe_url: Some(format!(
                "mailto:{}?subject=unsubscribe",
                from_address(&config)
            )),
            reply_to_token: Some(msg.conversation_id.clone()),
        };
        self.sender.send(&config, msg, &thread).await
    }

    fn threads(&self) -> bool {
        true
    }

    fn tracks_reachability(&self) -> bool {
        true
    }

    fn check_renderable(&self, text: &str, content: &Content) -> Result<(), String> {
        switchboard_channel_email::render(text, content).map(|_| ())
    }

    async fn download(
        &self,
        channel: &Channel,
        _attachment: &Attachment,
        index: usize,
        original: Option<&StoredOriginal>,
    ) -> Option<Result<Vec<u8>, SendError>> {
        let config = match EmailConfig::parse(&channel.config) {
            Ok(config) => config,
            Err(e) => return Some(Err(config_error(self.kind())(e))),
        };
        let original = original?;
        let found = switchboard_channel_email::attachment(
            &config,
            original.content_type.as_deref(),
            &original.body,
            index,
        );
        Some(found.map(|(_, _, bytes)| bytes).ok_or_else(|| {
            SendError::Permanent("the attachment is not in the stored original".into())
        }))
    }
}

/// The bare address of a channel's `from`, lowercased.
fn from_address(config: &EmailConfig) -> String {
    config
        .from_mailbox()
        .map(|m| m.email.to_string().to_lowercase())
        .unwrap_or_else(|_| config.from.to_lowercase())
}
