//! Switchboard: a conversational bot and coaching gateway.
//!
//! # Layout
//! The modules read as the path a message travels:
//!
//! ```text
//! provider webhook / socket / POST /v1/messages
//!   -> channels/<name>  verify, parse, normalize (provider types stay in those crates)
//!   -> ingest           dedupe by provider id, store, then acknowledge
//!   -> router           one turn at a time per conversation, in order
//!   -> answer           what the bot says (a Responder)
//!   -> outbox           durable delivery: retries, back-off, dead letters
//!   -> channels/<name>  provider send API
//! side paths: knowledge (documents → chunks → vectors; retrieval), llm (chat and embedding
//!             models behind a guard), core (tenants, keys),
//!             store (SQL), http (axum routers only), config, telemetry
//! ```

/// What the bot says to one inbound message (the `Responder` trait).
pub mod answer;
/// The command line (`serve`, `migrate`, `tenant create`, `key create`).
pub mod cli;
/// Commands every channel understands (`/start`, `/help`, `/stop`, `/human`, `/link`, STOP).
pub mod commands;
/// Layered configuration: defaults, TOML file, environment.
pub mod config;
/// Tenants, API keys, roles: domain values parsed at the edge.
pub mod core;
/// HTTP surface: axum routers and handlers.
pub mod http;
/// The ingest gate: dedupe and store before acknowledging.
pub mod ingest;
/// Creators' documents: ingestion, chunking, the vector index, retrieval.
pub mod knowledge;
/// Language models (Ollama, OpenAI-compatible): streaming chat, embeddings, and the guard
/// (concurrency limit, time limits, circuit breaker).
pub mod llm;
/// Moderation policies and their rules (word lists, regexes, personal-data detectors).
pub mod moderation;
/// Durable delivery of replies through the channels.
pub mod outbox;
/// Provider send-rate limits (per chat, per bot, per number).
pub mod pacer;
/// Long polling for Telegram bots without a public URL.
pub mod polling;
/// Coaching programs and the proactive engine (durable fires in each contact's time).
pub mod programs;
/// The channel registry: one home per channel kind (its configuration, webhooks, sends,
/// pacing, acknowledgements, what it renders, its secrets).
pub mod registry;
/// Per-conversation, in-order processing of stored messages.
pub mod router;
/// Building and running the server (port 0 friendly) and its orderly shutdown.
pub mod startup;
/// SQL storage on SQLite or PostgreSQL.
pub mod store;
/// Logs and Prometheus metrics.
pub mod telemetry;
