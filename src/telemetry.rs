//! Logs (tracing, text or JSON) and metrics (Prometheus text via the `metrics` facade).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the log subscriber (stderr). `RUST_LOG` overrides the default filter.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn,qdrant_edge=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Logs to `path` instead of the terminal (`switchboard chat`: log lines would break into the
/// conversation). Falls back to stderr if the file cannot be opened.
pub fn init_tracing_to_file(format: LogFormat, path: &std::path::Path) {
    let file = path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        });
    let Ok(file) = file else {
        return init_tracing(format);
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn,qdrant_edge=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// How often histogram samples are folded into their buckets (see [`metrics_handle`]).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide metrics recorder, installed on first use. (A process has one recorder; several
/// applications in one test process share it.)
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder is installed already; ours then simply stays unused.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            // Histogram samples wait in the recorder until upkeep (or a scrape of /metrics)
            // folds them into their buckets: without it, a gateway nobody scrapes grew its heap
            // by every latency it recorded (~45 bytes per reply in the channels bench's soak).
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no metrics upkeep thread: histograms grow until /metrics is scraped");
            }
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(
        "switchboard_inbound_total",
        "Inbound messages by channel and outcome (stored, duplicate)."
    );
    describe_counter!(
        "switchboard_processed_total",
        "Turns processed by outcome (replied, no_reply, error)."
    );
    describe_counter!(
        "switchboard_delivered_total",
        "Replies accepted by the provider."
    );
    describe_counter!(
        "switchboard_delivery_retries_total",
        "Failed delivery attempts that will be retried."
    );
    describe_counter!(
        "switchboard_dead_letters_total",
        "Deliveries given up on (dead letters)."
    );
    describe_histogram!(
        "switchboard_turn_latency_seconds",
        "From inbound stored to reply stored."
    );
    describe_histogram!(
        "switchboard_delivery_latency_seconds",
        "From reply stored to provider accepted."
    );
    describe_counter!(
        "switchboard_write_fallbacks_total",
        "Write batches (label write: ingest, complete) the multi-row fast paths handed to the item-by-item path."
    );
    describe_histogram!(
        "switchboard_write_tick_items",
        "Writes (inbound messages, completed turns, outcome lists) per SQLite write transaction."
    );
}

#[cfg(test)]
mod tests {
    /// The recorder keeps a thread that folds histogram samples into their buckets, so memory
    /// does not grow with every latency recorded when nobody scrapes `/metrics`.
    ///
    /// A new thread names itself once it runs (until then `/proc` shows the spawning thread's
    /// name), so the test looks again for a while before it fails.
    #[test]
    fn the_recorder_has_an_upkeep_thread() {
        let _handle = super::metrics_handle();
        let names = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .map(|tasks| {
                    tasks
                        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                        .map(|name| name.trim().to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut threads = names();
        while !threads.iter().any(|name| name == "metrics-upkeep")
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
            threads = names();
        }
        assert!(
            threads.iter().any(|name| name == "metrics-upkeep"),
            "{threads:?}"
        );
    }
}
