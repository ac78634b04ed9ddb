//! Building and running the application: store, workers and HTTP server from a bound listener and
//! a shutdown future, so tests can bind port 0 and stop it when they like.
//!
//! Shutdown order matters: stop accepting requests (in-flight ones finish), then let the router
//! finish the turns it started, then let the outbox finish the sends in flight. Whatever is left
//! (unprocessed turns, pending deliveries) is in the database and resumes on the next start.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::answer::{AnswerSettings, KnowledgeResponder, Responder};
use crate::config::Config;
use crate::http::{AppState, app};
use crate::ingest::Ingest;
use crate::knowledge::vectors::{EdgeIndex, VectorIndex};
use crate::knowledge::{Knowledge, KnowledgeConfig};
use crate::llm::guard::{Guarded, Limits};
use crate::llm::{Endpoint, Provider};
use crate::outbox::{Channels, Outbox};
use crate::router::Router;
use crate::store::Store;
use crate::telemetry::metrics_handle;

/// A built, not yet running, gateway.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    outbox: Outbox,
    models: Models,
}

/// Builds the responder from the gateway's knowledge, models and answer settings.
pub type MakeResponder =
    Box<dyn FnOnce(&Knowledge, &Models, AnswerSettings) -> Arc<dyn Responder> + Send>;

/// The language models the configuration names.
#[derive(Clone, Default)]
pub struct Models {
    /// The chat model behind its guard; `None` with `SWITCHBOARD_LLM_PROVIDER=none`.
    pub chat: Option<Arc<Guarded>>,
}

/// Where the configured models are; `None` when the provider is `none`.
pub fn llm_endpoint(config: &Config) -> Option<Endpoint> {
    Some(Endpoint {
        provider: Provider::parse(&config.llm_provider)?,
        url: config.llm_url.clone(),
        api_key: config.llm_api_key.as_ref().map(|k| k.expose().to_owned()),
    })
}

pub fn llm_limits(config: &Config) -> Limits {
    let l = &config.llm;
    Limits {
        concurrency: l.concurrency,
        first_token: Duration::from_millis(l.first_token_timeout_ms),
        total: Duration::from_millis(l.timeout_ms),
        failure_threshold: l.breaker_failures,
        cool_down: Duration::from_millis(l.breaker_cool_down_ms),
    }
}

pub fn answer_settings(config: &Config) -> AnswerSettings {
    AnswerSettings {
        context_tokens: config.llm.context_tokens,
        max_answer_tokens: config.llm.max_tokens,
        temperature: config.llm.temperature,
        ..AnswerSettings::default()
    }
}

/// The HTTP client toward model servers: no overall timeout (answers stream for a while; the
/// guard bounds them), a short connect timeout.
pub fn llm_http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the model HTTP client")
}

pub fn models_for(config: &Config) -> anyhow::Result<Models> {
    let Some(endpoint) = llm_endpoint(config) else {
        return Ok(Models::default());
    };
    let model = crate::llm::chat_model(llm_http()?, &endpoint, &config.chat_model);
    Ok(Models {
        chat: Some(Arc::new(Guarded::new(model, llm_limits(config)))),
    })
}

impl Models {
    /// One line for the start-up summary. An unreachable model trips the breaker, so the first
    /// conversations do not each wait to find out.
    pub async fn describe(&self) -> String {
        let Some(chat) = &self.chat else {
            return "none (SWITCHBOARD_LLM_PROVIDER=none): answers quote the best passage of the tenant's knowledge, marked as such".into();
        };
        let what = chat.model().describe();
        match tokio::time::timeout(Duration::from_secs(3), chat.model().check()).await {
            Ok(Ok(())) => {
                format!("{what}: reachable; answers are written from the tenant's knowledge")
            }
            // The server answered, without the model: reachable, and the fix is to get it.
            Ok(Err(crate::llm::LlmError::Status {
                status: 404,
                message,
            })) => {
                chat.trip();
                format!(
                    "{what}: the server is reachable but the model is missing ({message}). Fallback: answers quote the best passage of the tenant's knowledge, marked as such; the model is tried again every {} s",
                    chat.limits().cool_down.as_secs()
                )
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within 3 s".to_owned(),
                };
                chat.trip();
                format!(
                    "{what}: NOT reachable ({why}). Fallback: answers quote the best passage of the tenant's knowledge, marked as such; the model is tried again every {} s",
                    chat.limits().cool_down.as_secs()
                )
            }
        }
    }
}

/// How hybrid retrieval's embedding model is chosen (see [`Config::embed_model`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedChoice {
    /// BM25 alone.
    None,
    /// all-MiniLM-L6-v2 in this process, from the data directory (fetched once).
    Builtin,
    /// A model folder read in this process.
    Folder(PathBuf),
    /// A model on the LLM server, by name.
    Server(String),
}

impl EmbedChoice {
    pub fn of(config: &Config) -> EmbedChoice {
        match config.embed_model.as_deref().map(str::trim) {
            None | Some("") | Some("builtin") => EmbedChoice::Builtin,
            Some(name) if name.eq_ignore_ascii_case(crate::knowledge::embed::BUILTIN) => {
                EmbedChoice::Builtin
            }
            Some("none" | "off") => EmbedChoice::None,
            Some(path) if path.contains('/') || path.contains('\\') || Path::new(path).is_dir() => {
                EmbedChoice::Folder(PathBuf::from(path))
            }
            Some(name) => EmbedChoice::Server(name.to_owned()),
        }
    }
}

/// The embedding model and the size of its vectors, or `None` (BM25 alone) with the reason
/// logged.
async fn embedder_for(config: &Config) -> Option<(Arc<dyn crate::llm::Embedder>, usize)> {
    use crate::knowledge::embed;
    let bm25_only = |why: String| {
        tracing::warn!(
            "hybrid retrieval is OFF: {why}. Retrieval is BM25 (words) alone: off-topic questions that share a word with the knowledge may be answered from it, and questions in other words than the knowledge's are missed. Set SWITCHBOARD_EMBED_MODEL to a model folder (config.json, tokenizer.json, model.safetensors) to turn it on"
        );
    };
    let folder = match EmbedChoice::of(config) {
        EmbedChoice::None => {
            tracing::info!("SWITCHBOARD_EMBED_MODEL=none: BM25 retrieval alone");
            return None;
        }
        EmbedChoice::Server(model) => return server_embedder(config, &model).await,
        EmbedChoice::Folder(dir) => (
            dir.clone(),
            format!(
                "local-{}",
                dir.file_name()
                    .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
            ),
        ),
        EmbedChoice::Builtin => match builtin_model(config).await {
            Ok(dir) => (dir, embed::BUILTIN.to_owned()),
            Err(e) => {
                bm25_only(format!("the embedding model could not be fetched ({e:#})"));
                return None;
            }
        },
    };
    let (dir, name) = folder;
    let loaded =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(embed::LocalEmbedder, usize)> {
            let model = embed::LocalEmbedder::load(&dir, &name)?;
            let probe = model.embed_blocking(&["dimension probe".to_owned()])?;
            let size = probe.first().map_or(0, Vec::len);
            anyhow::ensure!(size > 0, "the model gave an empty embedding");
            Ok((model, size))
        })
        .await;
    match loaded {
        Ok(Ok((model, size))) => Some((Arc::new(model), size)),
        Ok(Err(e)) => {
            bm25_only(format!("the embedding model did not load ({e:#})"));
            None
        }
        Err(e) => {
            bm25_only(format!("loading the embedding model failed ({e})"));
            None
        }
    }
}

/// The built-in embedding model's folder in the data directory, fetched (once) and verified
/// if it is not there yet.
pub async fn builtin_model(config: &Config) -> anyhow::Result<PathBuf> {
    use crate::knowledge::embed;
    let dir = embed::builtin_dir(&config.data_dir);
    if embed::is_model_dir(&dir) {
        return Ok(dir);
    }
    let (url, sha) = match (&config.embed_model_url, &config.embed_model_sha256) {
        (Some(url), Some(sha)) => (url.clone(), sha.clone()),
        _ => (
            embed::BUILTIN_URL.to_owned(),
            embed::BUILTIN_SHA256.to_owned(),
        ),
    };
    tracing::info!(url = %url, into = %dir.display(), "fetching the embedding model {} (about 84 MB, once)", embed::BUILTIN);
    let started = std::time::Instant::now();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(600))
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()?;
    embed::fetch(&http, &url, &sha, &dir).await?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "fetched the embedding model and verified its SHA-256"
    );
    Ok(dir)
}

/// A model on the LLM server, asked for one embedding to learn its size.
async fn server_embedder(
    config: &Config,
    model: &str,
) -> Option<(Arc<dyn crate::llm::Embedder>, usize)> {
    let Some(endpoint) = llm_endpoint(config) else {
        tracing::warn!(
            "SWITCHBOARD_EMBED_MODEL names a server model but the LLM provider is none: BM25 retrieval only"
        );
        return None;
    };
    let http = match llm_http() {
        Ok(http) => http,
        Err(e) => {
            tracing::warn!(error = %e, "no HTTP client for the embedding model: BM25 retrieval only");
            return None;
        }
    };
    let embedder: Arc<dyn crate::llm::Embedder> =
        Arc::from(crate::llm::embedder(http, &endpoint, model));
    let probe = ["dimension probe".to_owned()];
    match tokio::time::timeout(Duration::from_secs(10), embedder.embed(&probe)).await {
        Ok(Ok(v)) if v.first().is_some_and(|v| !v.is_empty()) => {
            let size = v[0].len();
            Some((embedder, size))
        }
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) => "an empty embedding".to_owned(),
                Err(_) => "no answer within 10 s".to_owned(),
            };
            tracing::warn!(model = %model, error = %why, "the embedding model is not answering: retrieval is BM25 only until a restart finds it");
            None
        }
    }
}

/// The knowledge service on `store`, with the vector index the configuration names.
///
/// The embedding model ([`Config::embed_model`]): by default all-MiniLM-L6-v2 in this process
/// (fetched once into `$DATA_DIR/models/`, checked against its SHA-256); a folder path, a model
/// in this process from there; `none`, BM25 alone; another name, that model on the LLM server,
/// asked for one embedding to learn its size. The index lives in
/// `$DATA_DIR/vectors/<model>-<size>/` (BM25 alone: `vectors/bm25/`), so another model gets a
/// fresh index, and documents are indexed into it at start. A model that cannot be had leaves
/// retrieval lexical for this run, said in the log.
pub async fn knowledge_for(config: &Config, store: &Store) -> anyhow::Result<Knowledge> {
    let embedder = embedder_for(config).await;
    let profile = match &embedder {
        Some((e, size)) => format!("{}-{size}", sanitize(e.model())),
        None => "bm25".to_owned(),
    };
    let dense_size = embedder.as_ref().map(|(_, size)| *size);
    let vectors = config.data_dir.join("vectors");
    // What says "this index was filled": the Edge directory, or for a server a marker file
    // beside where the Edge directory would be.
    let (index, marker): (Arc<dyn VectorIndex>, PathBuf) = match &config.qdrant_url {
        Some(url) => (
            Arc::new(crate::knowledge::qdrant_server::QdrantServerIndex::connect(
                url, None, &profile, dense_size,
            )?),
            vectors.join(format!("qdrant-server-{profile}")),
        ),
        None => {
            let dir = vectors.join(&profile);
            (
                Arc::new(EdgeIndex::with_dense(dir.clone(), dense_size)),
                dir,
            )
        }
    };
    if !marker.exists() {
        let marked = store.mark_all_unindexed().await?;
        if marked > 0 {
            tracing::info!(documents = marked, index = %index.describe(), "a new vector index: documents will be indexed into it at start");
        }
        std::fs::create_dir_all(&marker)
            .with_context(|| format!("creating {}", marker.display()))?;
    }
    let pdf = match &config.pdf_worker {
        Some(program) => crate::knowledge::pdf_worker::PdfReader::new(
            program.clone(),
            Duration::from_secs(20),
            2,
        ),
        None => crate::knowledge::pdf_worker::PdfReader::default(),
    };
    let knowledge =
        Knowledge::new(store.clone(), index, KnowledgeConfig::default())?.with_pdf_reader(pdf);
    Ok(match embedder {
        Some((e, _)) => knowledge.with_embedder(e),
        None => knowledge,
    })
}

/// A model name as a directory name: `nomic-embed-text:latest` → `nomic-embed-text_latest`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Application {
    /// Connects and migrates the store and binds the listener, answering from the tenants'
    /// knowledge with the configured language model (quoted passages while it is not answering).
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_with(
            config,
            Box::new(|knowledge, models, settings| {
                Arc::new(KnowledgeResponder::new(
                    knowledge.clone(),
                    models.chat.clone(),
                    settings,
                ))
            }),
        )
        .await
    }

    /// With a fixed responder (tests, benchmarks).
    pub async fn build_with_responder(
        config: Config,
        responder: Arc<dyn Responder>,
    ) -> anyhow::Result<Application> {
        Self::build_with(config, Box::new(move |_, _, _| responder)).await
    }

    /// With the responder `make` builds from the gateway's knowledge and models.
    pub async fn build_with(config: Config, make: MakeResponder) -> anyhow::Result<Application> {
        let (sealer, key_source) = crate::store::sealing::Sealer::load(
            config.secret_key.as_ref().map(|k| k.expose()),
            &config.data_dir,
        )?;
        tracing::info!(key = %key_source, "channel credentials are encrypted at rest");
        let visitor_tokens =
            switchboard_channel_widget::VisitorTokenKey::derive(sealer.derived_key());
        let store = Store::connect(&config.database_url(), config.database_max_connections)
            .await?
            .with_sealer(sealer);
        store.migrate().await?;
        let listener = TcpListener::bind(config.listen_addr()?)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        // Every call a channel makes goes through the egress policy: tenant-set URLs cannot
        // reach our own network unless the operator allows it.
        let egress = switchboard_channel::egress::EgressPolicy::parse(&config.egress_allow)
            .map_err(anyhow::Error::msg)?;
        let http = switchboard_channel::egress::client_builder(egress.clone())
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        let knowledge = knowledge_for(&config, &store).await?;
        let models = models_for(&config)?;
        let responder = make(&knowledge, &models, answer_settings(&config));
        let wake = Arc::new(Notify::new());
        let channels = Channels::new(http, egress, config.public_url.clone())?;
        let outbox = Outbox::new(
            store.clone(),
            channels.clone(),
            &config.outbox,
            wake.clone(),
        );
        let max_reads = (config.database_max_connections as usize).max(2);
        let generator: Option<Arc<dyn crate::programs::Generator>> =
            models.chat.clone().map(|model| {
                Arc::new(crate::programs::ModelGenerator::new(
                    knowledge.clone(),
                    model,
                    answer_settings(&config),
                )) as Arc<dyn crate::programs::Generator>
            });
        let programs = crate::programs::Programs::new(
            store.clone(),
            wake.clone(),
            &config.timezone,
            generator,
        );
        // The classifier asks the chat model answers use, behind the same guard.
        let moderation = Arc::new(
            crate::moderation::Moderation::new(store.clone())
                .with_classifier(models.chat.clone())?,
        );
        programs.set_moderation(moderation.clone());
        let router = Router::new(
            store.clone(),
            responder,
            wake,
            max_reads,
            config.workers,
            Some(channels.clone()),
            Some(programs.clone()),
            Some(moderation.clone()),
            config.workers.then(|| outbox.handoff()),
        );
        let state = AppState::new(crate::http::Shared {
            channels,
            pollers: crate::polling::Pollers::default(),
            knowledge,
            widget: Arc::new(crate::http::widget::WidgetRuntime::new(visitor_tokens)),
            ingest: Ingest::new(store.clone(), router.clone()),
            programs,
            moderation,
            store,
            router,
            config: Arc::new(config),
            metrics: metrics_handle(),
        });
        Ok(Application {
            listener,
            state,
            outbox,
            models,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    pub fn router(&self) -> &Router {
        &self.state.router
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn knowledge(&self) -> &Knowledge {
        &self.state.knowledge
    }

    pub fn ingest(&self) -> &Ingest {
        &self.state.ingest
    }

    pub fn models(&self) -> &Models {
        &self.models
    }

    pub fn programs(&self) -> &crate::programs::Programs {
        &self.state.programs
    }

    pub fn moderation(&self) -> &Arc<crate::moderation::Moderation> {
        &self.state.moderation
    }

    /// Serves until `shutdown` resolves, then shuts down in order (see the module docs).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            outbox,
            models: _,
        } = self;
        match state.knowledge.reindex_pending().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(documents = n, "indexed documents left unindexed by a crash"),
            Err(e) => {
                tracing::warn!(error = %e, "indexing pending documents failed; will retry at next start")
            }
        }
        let workers = CancellationToken::new();
        let outbox_task = if state.config.workers {
            let resumed = state.router.resume_pending().await?;
            if resumed > 0 {
                tracing::info!(conversations = resumed, "resuming unanswered messages");
            }
            Some(tokio::spawn(outbox.run(workers.clone())))
        } else {
            None
        };
        let router = state.router.clone();
        let store = state.store.clone();
        let pollers = state.pollers.clone();
        if state.config.workers {
            let started = pollers
                .start_all(
                    &state.store,
                    &state.ingest,
                    &state.channels,
                    state.config.public_url.as_deref(),
                )
                .await?;
            if started > 0 {
                tracing::info!(channels = started, "polling Telegram bots");
            }
        }
        let engine = tokio_util::task::TaskTracker::new();
        let programs = state.programs.clone();
        let moderation_stop = tokio_util::sync::CancellationToken::new();
        if state.config.workers {
            programs.spawn(&engine);
            state.moderation.spawn(&engine, moderation_stop.clone());
        }
        // Widget sockets outlive their HTTP request: they are told to close (1001) as soon as
        // the shutdown begins, so that the server's graceful wait is not held by them.
        let widget = state.widget.clone();
        let shutdown = {
            let widget = widget.clone();
            async move {
                shutdown.await;
                widget.shutdown.cancel();
            }
        };
        // Whatever the server's outcome, the workers are stopped in order before returning.
        let limits = ServerLimits::from(state.config.as_ref());
        let served = serve_http(listener, app(state), shutdown, limits)
            .await
            .context("HTTP server");
        widget.shutdown(Duration::from_secs(3)).await;
        pollers.shutdown().await;
        programs.shutdown();
        moderation_stop.cancel();
        engine.close();
        engine.wait().await;
        router.shutdown().await;
        workers.cancel();
        if let Some(task) = outbox_task {
            let _ = task.await;
        }
        store.close().await;
        served
    }
}

/// What one client may hold of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections open at once; the next one waits in the kernel's queue until one closes.
    pub max_connections: usize,
    /// The request line and headers must arrive within this, or the connection is closed.
    pub header_timeout: Duration,
}

impl From<&Config> for ServerLimits {
    fn from(config: &Config) -> Self {
        ServerLimits {
            max_connections: config.max_connections.max(1),
            header_timeout: Duration::from_millis(config.header_timeout_ms.max(1)),
        }
    }
}

/// The HTTP/1.1 server (WebSocket upgrades included). Written out instead of `axum::serve`,
/// which has neither a header read timeout nor a connection cap: a client that opens a
/// connection and sends half a request would hold it for ever. Body read time is bounded by a
/// layer of the app (`SWITCHBOARD_BODY_TIMEOUT_MS`).
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServerLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    // Graceful shutdown by hand: hyper-util's watcher does not take connections that may be
    // upgraded (the widget's WebSockets).
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let connections = tokio_util::task::TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        // A free slot first, then accept: at the cap, new clients wait in the backlog.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(remote));
                app.clone().oneshot(request.map(axum::body::Body::new))
            },
        );
        let connection = http1
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = async {
                    // (the borrow `wait_for` returns is dropped here, before any await)
                    let _ = stop.wait_for(|stopping| *stopping).await.map(|_| ());
                } => {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.as_mut().await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: no new requests; finishing work in progress");
}

/// An exclusive hold on the data directory for this process's life: two processes on one
/// directory would share the embedded vector store (which allows one writer) and the SQLite
/// file behind each other's back. The lock file says who holds it, so the second process can
/// say so; the kernel releases it when the holder exits, however it exits.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    /// Takes the lock for `what` (e.g. `serve on http://127.0.0.1:8080`), or fails with a message
    /// that names the process holding it.
    pub fn acquire(data_dir: &std::path::Path, what: &str) -> anyhow::Result<DataDirLock> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let path = data_dir.join("switchboard.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                anyhow::bail!(
                    "the data directory {} is in use by another switchboard process ({}); stop it first, or use another SWITCHBOARD_DATA_DIR",
                    data_dir.display(),
                    if holder.is_empty() { "unknown" } else { holder }
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "pid {}: switchboard {what}", std::process::id())?;
        file.flush()?;
        Ok(DataDirLock { _file: file })
    }
}
