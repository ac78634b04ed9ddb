//! The command line (SPEC §1). Each command loads the configuration, does one thing, and exits 0,
//! or non-zero with a one-line reason on stderr (printed by `main`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::core::{Role, TenantSlug};
use crate::startup::{Application, shutdown_signal};
use crate::store::Store;
use crate::telemetry::init_tracing;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Conversational bot and coaching gateway"
)]
pub struct Cli {
    /// Configuration file (TOML). Default: $SWITCHBOARD_CONFIG, else ./switchboard.toml if present.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate if needed and run the gateway (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage a tenant's knowledge (documents the bot answers from).
    #[command(subcommand)]
    Knowledge(KnowledgeCommand),
    /// Measure answer quality.
    #[command(subcommand)]
    Eval(EvalCommand),
}

#[derive(Debug, Subcommand)]
pub enum KnowledgeCommand {
    /// Ingest files and folders (.md, .txt, .html); a file ingested again replaces its chunks if
    /// it changed and is skipped if not.
    Ingest {
        #[arg(long)]
        tenant: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Retrieval quality on a BEIR-style folder (corpus.jsonl, queries.jsonl, qrels/test.tsv):
    /// recall@1, recall@5, MRR@10, through the bot's own ingestion and search, on a throw-away
    /// store.
    Retrieval {
        dir: PathBuf,
        /// Chunks retrieved per query (documents are ranked by their best chunk).
        #[arg(long, default_value_t = 20)]
        depth: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and its first admin API key (shown once).
    Create {
        /// Short name: a-z, 0-9 and '-'.
        slug: String,
        /// Display name (default: the slug).
        #[arg(long)]
        name: Option<String>,
        /// Print {"tenant_id","slug","admin_key","widget_key"} as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key (shown once; stored hashed).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        role: KeyRole,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyRole {
    Admin,
    Creator,
    Moderator,
}

impl From<KeyRole> for Role {
    fn from(r: KeyRole) -> Role {
        match r {
            KeyRole::Admin => Role::Admin,
            KeyRole::Creator => Role::Creator,
            KeyRole::Moderator => Role::Moderator,
        }
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    init_tracing(config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let store = open_store(&config).await?;
            println!("migrations applied ({})", store.backend().name());
            Ok(())
        }
        Command::Tenant(TenantCommand::Create { slug, name, json }) => {
            let slug = TenantSlug::parse(&slug).map_err(anyhow::Error::msg)?;
            let store = open_store(&config).await?;
            let name = name.unwrap_or_else(|| slug.to_string());
            let created = store.create_tenant(&slug, &name).await?;
            if json {
                println!("{}", serde_json::to_string(&created)?);
            } else {
                println!("tenant:     {} ({})", created.slug, created.tenant_id);
                println!(
                    "admin key:  {}   (shown once; store it now)",
                    created.admin_key
                );
                println!("widget key: {}", created.widget_key);
            }
            Ok(())
        }
        Command::Knowledge(KnowledgeCommand::Ingest { tenant, paths }) => {
            let slug = TenantSlug::parse(&tenant).map_err(anyhow::Error::msg)?;
            let store = open_store(&config).await?;
            let tenant = store
                .tenant_by_slug(slug.as_str())
                .await?
                .ok_or_else(|| anyhow::anyhow!("no tenant with slug {slug:?}"))?;
            let knowledge = crate::startup::knowledge_for(&config, &store)?;
            let files = crate::knowledge::files::collect(&paths)?;
            let failed = ingest_files(&knowledge, &tenant.id, &files).await;
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} files were not ingested",
                files.len()
            );
            Ok(())
        }
        Command::Eval(EvalCommand::Retrieval { dir, depth, json }) => {
            let report = eval_retrieval(&config, &dir, depth).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} documents ({} chunks), {} queries, BM25 retrieval (embedded Qdrant Edge)",
                    report.documents, report.chunks, report.queries
                );
                println!("recall@1  {:.3}", report.recall_at_1);
                println!("recall@5  {:.3}", report.recall_at_5);
                println!("MRR@10    {:.3}", report.mrr_at_10);
                println!(
                    "ingest {:.1} s; query p50 {:.2} ms, p99 {:.2} ms",
                    report.ingest_seconds, report.query_p50_ms, report.query_p99_ms
                );
            }
            Ok(())
        }
        Command::Key(KeyCommand::Create { tenant, role, json }) => {
            let slug = TenantSlug::parse(&tenant).map_err(anyhow::Error::msg)?;
            let store = open_store(&config).await?;
            let role = Role::from(role);
            let key = store.create_key(&slug, role).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "tenant": slug.as_str(), "role": role.as_str(), "key": key })
                );
            } else {
                println!("{role} key for {slug}: {key}   (shown once; store it now)");
            }
            Ok(())
        }
    }
}

/// Ingests files one by one with a progress bar on stderr; returns how many failed.
async fn ingest_files(
    knowledge: &crate::knowledge::Knowledge,
    tenant_id: &str,
    files: &[PathBuf],
) -> usize {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let (mut failed, mut chunks) = (0, 0);
    // Batches share one transaction and one vector write; progress is shown per file.
    let mut outcomes = Vec::with_capacity(files.len());
    for batch in files.chunks(32) {
        outcomes.extend(crate::knowledge::files::ingest_files(knowledge, tenant_id, batch).await);
    }
    for (i, (path, outcome)) in files.iter().zip(outcomes).enumerate() {
        let line = match &outcome {
            Ok(done) => {
                chunks += done.chunks;
                format!(
                    "{} ({} chunks, {})",
                    path.display(),
                    done.chunks,
                    done.status
                )
            }
            Err(e) => {
                failed += 1;
                format!("{}: {e}", path.display())
            }
        };
        let filled = (i + 1) * 30 / files.len().max(1);
        let bar = format!(
            "[{}{}] {}/{}",
            "#".repeat(filled),
            "-".repeat(30 - filled),
            i + 1,
            files.len()
        );
        if tty {
            eprint!("\r\x1b[2K{bar} {line}");
            if outcome.is_err() {
                eprintln!();
            }
        } else {
            eprintln!("{bar} {line}");
        }
        let _ = std::io::stderr().flush();
    }
    if tty {
        eprintln!();
    }
    eprintln!(
        "{} files ingested ({chunks} chunks), {failed} failed",
        files.len() - failed
    );
    failed
}

/// `switchboard eval retrieval`: a fresh SQLite store and vector index in a temporary folder.
async fn eval_retrieval(
    config: &Config,
    dir: &std::path::Path,
    depth: usize,
) -> anyhow::Result<crate::knowledge::eval::Report> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let scratch =
        std::env::temp_dir().join(format!("switchboard-eval-{}-{nanos}", std::process::id()));
    let mut scratch_config = config.clone();
    scratch_config.data_dir = scratch.clone();
    scratch_config.database_url = None;
    scratch_config.qdrant_url = None;
    let result = async {
        let store = open_store(&scratch_config).await?;
        let tenant = store
            .create_tenant(
                &TenantSlug::parse("eval").map_err(anyhow::Error::msg)?,
                "Evaluation",
            )
            .await?;
        let knowledge = crate::startup::knowledge_for(&scratch_config, &store)?;
        let report =
            crate::knowledge::eval::retrieval(&knowledge, &tenant.tenant_id, dir, depth).await;
        drop(knowledge);
        store.close().await;
        report
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database_url(), 2).await?;
    store.migrate().await?;
    Ok(store)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let store_line = describe_store(&config);
    let app = Application::build(config.clone())
        .await
        .context("starting the gateway")?;
    let addr = app.local_addr()?;
    eprintln!("store:   {store_line}");
    eprintln!("vectors: {}", app.knowledge().describe());
    eprintln!(
        "llm:     none connected in this build: answers quote the best passage of the tenant's knowledge, marked as such"
    );
    if app.store().tenant_count().await? == 0 {
        let slug = TenantSlug::parse("demo").map_err(anyhow::Error::msg)?;
        let demo = app.store().create_tenant(&slug, "Demo").await?;
        println!("Created tenant `demo` on this empty data directory.");
        println!("  admin key (shown once): {}", demo.admin_key);
        println!("  widget key:             {}", demo.widget_key);
        println!(
            "  try: curl -s http://{addr}/v1/messages -H 'Authorization: Bearer {}' \\",
            demo.admin_key
        );
        println!("         -H 'Content-Type: application/json' \\");
        println!(
            "         -d '{{\"contact\":{{\"external_id\":\"me\"}},\"text\":\"Hello\",\"wait\":true}}'"
        );
        // The demo tenant answers from the coaching content in ./knowledge.
        let demo_dir = PathBuf::from("knowledge");
        if demo_dir.is_dir() {
            let files = crate::knowledge::files::collect(&[demo_dir])?;
            let failed = ingest_files(app.knowledge(), &demo.tenant_id, &files).await;
            if failed > 0 {
                eprintln!("warning: {failed} demo knowledge files were not ingested");
            }
        }
    }
    eprintln!("listening on http://{addr}");
    if app.store().tenant_by_slug("demo").await?.is_some() {
        eprintln!("demo:    http://{addr}/demo (the web widget of tenant `demo`)");
    }
    app.run_until_stopped(shutdown_signal()).await
}

/// "sqlite at ./data/switchboard.db" / "postgres at host:port/db" — never the password.
fn describe_store(config: &Config) -> String {
    let url = config.database_url();
    let url = url.expose();
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or(rest);
        return format!("sqlite at {path} (WAL, synchronous=FULL)");
    }
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let host = after_scheme
        .rsplit_once('@')
        .map_or(after_scheme, |(_, h)| h);
    format!("postgres at {}", host.split('?').next().unwrap_or(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_channel::Secret;

    #[test]
    fn the_store_summary_never_shows_a_password() {
        let config = Config {
            database_url: Some(Secret::new(
                "postgres://u:hunter2@db:5432/sb?sslmode=disable",
            )),
            ..Config::default()
        };
        assert_eq!(describe_store(&config), "postgres at db:5432/sb");
    }
}
