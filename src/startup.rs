//! Building and running the application: store, workers and HTTP server from a bound listener and
//! a shutdown future, so tests can bind port 0 and stop it when they like.
//!
//! Shutdown order matters: stop accepting requests (in-flight ones finish), then let the router
//! finish the turns it started, then let the outbox finish the sends in flight. Whatever is left
//! (unprocessed turns, pending deliveries) is in the database and resumes on the next start.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::answer::{ExtractiveResponder, Responder};
use crate::config::Config;
use crate::http::{AppState, app};
use crate::ingest::Ingest;
use crate::knowledge::vectors::{EdgeIndex, VectorIndex};
use crate::knowledge::{Knowledge, KnowledgeConfig};
use crate::outbox::{Channels, Outbox};
use crate::router::Router;
use crate::store::Store;
use crate::telemetry::metrics_handle;

/// A built, not yet running, gateway.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    outbox: Outbox,
}

/// The knowledge service on `store`, with the vector index the configuration names.
pub fn knowledge_for(config: &Config, store: &Store) -> anyhow::Result<Knowledge> {
    anyhow::ensure!(
        config.qdrant_url.is_none(),
        "SWITCHBOARD_QDRANT_URL is set, but this build has only the embedded vector store (Qdrant Edge in $DATA_DIR/vectors); unset it"
    );
    let index: Arc<dyn VectorIndex> = Arc::new(EdgeIndex::new(config.data_dir.join("vectors")));
    Knowledge::new(store.clone(), index, KnowledgeConfig::default())
}

impl Application {
    /// Connects and migrates the store and binds the listener, answering from the tenants'
    /// knowledge (quoted passages while no language model is connected).
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_inner(config, None).await
    }

    pub async fn build_with_responder(
        config: Config,
        responder: Arc<dyn Responder>,
    ) -> anyhow::Result<Application> {
        Self::build_inner(config, Some(responder)).await
    }

    async fn build_inner(
        config: Config,
        responder: Option<Arc<dyn Responder>>,
    ) -> anyhow::Result<Application> {
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
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        let knowledge = knowledge_for(&config, &store)?;
        let responder =
            responder.unwrap_or_else(|| Arc::new(ExtractiveResponder::new(knowledge.clone())));
        let wake = Arc::new(Notify::new());
        let channels = Channels::new(http)?;
        let outbox = Outbox::new(
            store.clone(),
            channels.clone(),
            &config.outbox,
            wake.clone(),
        );
        let max_reads = (config.database_max_connections as usize).max(2);
        let router = Router::new(
            store.clone(),
            responder,
            wake,
            max_reads,
            config.workers,
            Some(channels.clone()),
        );
        let state = AppState {
            channels,
            pollers: crate::polling::Pollers::default(),
            knowledge,
            widget: Arc::new(crate::http::widget::WidgetRuntime::new(visitor_tokens)),
            ingest: Ingest::new(store.clone(), router.clone()),
            store,
            router,
            config: Arc::new(config),
            metrics: metrics_handle(),
        };
        Ok(Application {
            listener,
            state,
            outbox,
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

    /// Serves until `shutdown` resolves, then shuts down in order (see the module docs).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            outbox,
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
        let served = axum::serve(
            listener,
            app(state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server");
        widget.shutdown(Duration::from_secs(3)).await;
        pollers.shutdown().await;
        router.shutdown().await;
        workers.cancel();
        if let Some(task) = outbox_task {
            let _ = task.await;
        }
        store.close().await;
        served
    }
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
