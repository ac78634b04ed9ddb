//! The command line (SPEC §1). Each command loads the configuration, does one thing, and exits 0,
//! or non-zero with a one-line reason on stderr (printed by `main`).

use std::path::PathBuf;
use std::sync::Arc;

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
    /// Talk to a tenant's bot from the terminal, through the same router, knowledge and model
    /// as the gateway (messages arrive on the tenant's `api` channel). `/quit` or end of input
    /// stops. Run it with the gateway stopped (it opens the same embedded vector store).
    Chat {
        #[arg(long)]
        tenant: String,
        /// Who you are to the bot (the contact's external id): one conversation per name.
        #[arg(long = "as", default_value = "terminal")]
        contact: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KnowledgeCommand {
    /// Ingest files and folders (.md, .txt, .html, .pdf); a file ingested again replaces its chunks if
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
            let knowledge = crate::startup::knowledge_for(&config, &store).await?;
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
                    "{} documents ({} chunks), {} queries, {} retrieval (embedded Qdrant Edge)",
                    report.documents,
                    report.chunks,
                    report.queries,
                    if report.mode == "hybrid" {
                        "hybrid (BM25 + embeddings, RRF)"
                    } else {
                        "BM25"
                    }
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
        Command::Chat { tenant, contact } => chat(config, &tenant, &contact).await,
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
        let knowledge = crate::startup::knowledge_for(&scratch_config, &store).await?;
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

/// Prints the answer as it is written, then what was stored (if it differs: a fallback) and the
/// citations.
struct Terminal;

impl crate::answer::Deltas for Terminal {
    fn delta(&self, text: &str) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    fn reset(&self) {
        println!("\n[the model stopped answering; falling back]");
    }
}

/// The tenant's responder, streaming to the terminal.
struct TerminalResponder(Arc<dyn crate::answer::Responder>);

#[async_trait::async_trait]
impl crate::answer::Responder for TerminalResponder {
    async fn respond(&self, turn: &crate::answer::Turn) -> anyhow::Result<crate::answer::Answer> {
        self.0.respond_streaming(turn, &Terminal).await
    }
}

async fn chat(mut config: Config, tenant: &str, contact: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let slug = TenantSlug::parse(tenant).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!contact.trim().is_empty(), "--as: a name is needed");
    // Nothing listens for the outside: the gateway's own port stays free for `serve`.
    config.listen = "127.0.0.1:0".into();
    let wait = std::time::Duration::from_millis(
        config.llm.timeout_ms + config.llm.first_token_timeout_ms + 30_000,
    );
    let app = Application::build_with(
        config,
        Box::new(|knowledge, models, settings| {
            Arc::new(TerminalResponder(Arc::new(
                crate::answer::KnowledgeResponder::new(
                    knowledge.clone(),
                    models.chat.clone(),
                    settings,
                ),
            )))
        }),
    )
    .await?;
    let store = app.store().clone();
    let tenant = store
        .tenant_by_slug(slug.as_str())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tenant with slug {slug:?}"))?;
    eprintln!("llm:     {}", app.models().describe().await);
    let router = app.router().clone();
    let ingest = app.ingest().clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));
    let channel = store.api_channel(&tenant.id).await?;
    eprintln!(
        "chatting with {} ({}) as {contact:?}; /quit to stop",
        tenant.name, tenant.slug
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let result: anyhow::Result<()> = async {
        loop {
            eprint!("you> ");
            let Some(line) = lines.next_line().await? else {
                break;
            };
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            if matches!(text, "/quit" | "/exit") {
                break;
            }
            let message = switchboard_channel::InboundMessage::text(
                crate::store::new_id(),
                switchboard_channel::ContactRef {
                    external_id: contact.to_owned(),
                    display_name: None,
                },
                text.to_owned(),
            );
            let ingested = ingest.accept(&channel, message).await?;
            print!("bot> ");
            match router
                .wait_processed(&tenant.id, &ingested.message_id, wait)
                .await?
            {
                Some(Some(reply)) => {
                    // What was stored is the answer; a streamed preview that differs (a
                    // fallback after a failure) is followed by it.
                    println!();
                    if !reply.text.is_empty() {
                        println!("     {}", reply.text.replace('\n', "\n     "));
                    }
                    if let Some(citations) = reply.citations.as_array()
                        && !citations.is_empty()
                    {
                        let titles: Vec<String> = citations
                            .iter()
                            .filter_map(|c| {
                                Some(format!(
                                    "{} (chunk {})",
                                    c.get("title")?.as_str()?,
                                    c.get("chunk")?
                                ))
                            })
                            .collect();
                        println!("     sources: {}", titles.join("; "));
                    }
                }
                Some(None) => println!("(no reply: the conversation is not with the bot)"),
                None => println!("(no reply yet; it will be stored when it comes)"),
            }
        }
        Ok(())
    }
    .await;
    stop.cancel();
    running.await??;
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
    eprintln!("llm:     {}", app.models().describe().await);
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
