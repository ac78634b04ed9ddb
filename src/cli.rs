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
    /// Coaching programs.
    #[command(subcommand)]
    Programs(ProgramsCommand),
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
    /// List a tenant's documents (id, title, source, chunks).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a document (its chunks and vectors too) by its id.
    Delete {
        #[arg(long)]
        tenant: String,
        document_id: String,
    },
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
pub enum ProgramsCommand {
    /// The next 10 messages a contact would get from a program, in their local time and UTC,
    /// with quiet-hour shifts and DST changes marked.
    Preview {
        #[arg(long)]
        tenant: String,
        /// The program's id.
        #[arg(long)]
        program: String,
        /// The contact's id.
        #[arg(long)]
        contact: String,
        #[arg(long)]
        json: bool,
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
    /// Grounded or honest: on a BEIR-style folder and a file of off-topic questions, the share
    /// of off-topic questions answered "no answer", recall@5 of what the bot answers from (with
    /// and without the documents' titles), a sweep of relevance floors, and — with
    /// `--generate N` and a language model — how many written answers their citations support.
    Answers {
        dir: PathBuf,
        /// JSON lines with `text`: questions the knowledge does not cover.
        #[arg(long)]
        off_topic: PathBuf,
        /// On-topic questions to answer with the configured language model.
        #[arg(long, default_value_t = 0)]
        generate: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// List the tenants.
    List {
        #[arg(long)]
        json: bool,
    },
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
    /// List a tenant's API keys (id, role, first characters; never the key itself).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key by its id (`key list` shows it).
    Revoke {
        #[arg(long)]
        tenant: String,
        key_id: String,
    },
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
    if matches!(cli.command, Some(Command::Chat { .. })) {
        crate::telemetry::init_tracing_to_file(config.log_format, &chat_log(&config));
    } else {
        init_tracing(config.log_format);
    }
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
            let _lock = lock_beside_serve(&config, "knowledge ingest")?;
            let store = open_store(&config).await?;
            let tenant = find_tenant(&store, &tenant).await?;
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
        Command::Eval(EvalCommand::Answers {
            dir,
            off_topic,
            generate,
            json,
        }) => {
            let report = eval_answers(&config, &dir, &off_topic, generate).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_answers_report(&report);
            }
            Ok(())
        }
        Command::Chat { tenant, contact } => chat(config, &tenant, &contact).await,
        Command::Programs(ProgramsCommand::Preview {
            tenant,
            program,
            contact,
            json,
        }) => {
            let store = open_store(&config).await?;
            let tenant = find_tenant(&store, &tenant).await?;
            let programs = crate::programs::Programs::new(
                store.clone(),
                Arc::new(tokio::sync::Notify::new()),
                &config.timezone,
                None,
            );
            let fires = programs.preview(&tenant.id, &program, &contact).await?;
            if json {
                println!("{}", serde_json::json!({ "fires": fires }));
            } else if fires.is_empty() {
                println!(
                    "nothing to send: the program is complete for this contact, or waits on an answer"
                );
            } else {
                for f in fires {
                    let mut line = format!(
                        "{:<16} {}  ({} UTC, {})",
                        f.step, f.at_local, f.at_utc, f.timezone
                    );
                    if let Some(s) = f.shifted_by {
                        line.push_str(&format!("  shifted {s}"));
                    }
                    if let Some(d) = f.dst_change {
                        line.push_str(&format!("  DST: {d}"));
                    }
                    println!("{line}");
                }
            }
            Ok(())
        }
        Command::Tenant(TenantCommand::List { json }) => {
            let store = open_store(&config).await?;
            let tenants = store.list_tenants().await?;
            if json {
                println!("{}", serde_json::json!({ "tenants": tenants }));
            } else if tenants.is_empty() {
                println!(
                    "no tenants yet: `switchboard serve` creates `demo` on an empty data directory, `switchboard tenant create <slug>` makes one"
                );
            } else {
                for t in tenants {
                    println!("{:<20} {}  {}", t.slug, t.id, t.name);
                }
            }
            Ok(())
        }
        Command::Key(KeyCommand::List { tenant, json }) => {
            let store = open_store(&config).await?;
            let tenant = find_tenant(&store, &tenant).await?;
            let keys = store.list_keys(&tenant.id).await?;
            if json {
                println!("{}", serde_json::json!({ "keys": keys }));
            } else {
                for k in keys {
                    println!(
                        "{}  {:<9} {}…  {}",
                        k.id,
                        k.role,
                        k.prefix,
                        if k.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "live"
                        }
                    );
                }
            }
            Ok(())
        }
        Command::Key(KeyCommand::Revoke { tenant, key_id }) => {
            let store = open_store(&config).await?;
            let tenant = find_tenant(&store, &tenant).await?;
            anyhow::ensure!(
                store.revoke_key(&tenant.id, &key_id).await?,
                "tenant `{}` has no live key `{key_id}` (`switchboard key list --tenant {}` shows them)",
                tenant.slug,
                tenant.slug
            );
            println!("key {key_id} revoked");
            Ok(())
        }
        Command::Knowledge(KnowledgeCommand::List { tenant, json }) => {
            let store = open_store(&config).await?;
            let tenant = find_tenant(&store, &tenant).await?;
            let documents = store.list_documents(&tenant.id).await?;
            if json {
                println!("{}", serde_json::json!({ "documents": documents }));
            } else if documents.is_empty() {
                println!("tenant `{}` has no documents", tenant.slug);
            } else {
                for d in documents {
                    println!(
                        "{}  {:>4} chunks  {}  ({})",
                        d.id, d.chunks, d.title, d.source
                    );
                }
            }
            Ok(())
        }
        Command::Knowledge(KnowledgeCommand::Delete {
            tenant,
            document_id,
        }) => {
            let _lock = lock_beside_serve(&config, "knowledge delete")?;
            let store = open_store(&config).await?;
            let tenant = find_tenant(&store, &tenant).await?;
            let knowledge = crate::startup::knowledge_for(&config, &store).await?;
            anyhow::ensure!(
                knowledge.delete(&tenant.id, &document_id).await?,
                "tenant `{}` has no document `{document_id}` (`switchboard knowledge list --tenant {}` shows them)",
                tenant.slug,
                tenant.slug
            );
            println!("document {document_id} deleted");
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

/// A throw-away configuration for an evaluation: SQLite and embedded vectors in a fresh folder
/// under the temporary directory (returned, to be removed), the rest as configured. The built-in
/// embedding model is read from (or fetched into) the configured data directory, not the
/// scratch one.
async fn scratch_config(config: &Config) -> anyhow::Result<(PathBuf, Config)> {
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
    if crate::startup::EmbedChoice::of(config) == crate::startup::EmbedChoice::Builtin {
        let dir = crate::startup::builtin_model(config).await?;
        scratch_config.embed_model = Some(dir.to_string_lossy().into_owned());
    }
    Ok((scratch, scratch_config))
}

/// `switchboard eval retrieval`: a fresh SQLite store and vector index in a temporary folder.
async fn eval_retrieval(
    config: &Config,
    dir: &std::path::Path,
    depth: usize,
) -> anyhow::Result<crate::knowledge::eval::Report> {
    let (scratch, scratch_config) = scratch_config(config).await?;
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

/// `switchboard eval answers`: a fresh SQLite store and vector index in a temporary folder
/// (the built-in embedding model is read from, or fetched into, the configured data directory).
async fn eval_answers(
    config: &Config,
    dir: &std::path::Path,
    off_topic: &std::path::Path,
    generate: usize,
) -> anyhow::Result<crate::knowledge::eval::AnswersReport> {
    let (scratch, scratch_config) = scratch_config(config).await?;
    let result = async {
        let store = open_store(&scratch_config).await?;
        let mut tenants = Vec::new();
        for slug in ["eval", "eval-untitled"] {
            tenants.push(
                store
                    .create_tenant(
                        &TenantSlug::parse(slug).map_err(anyhow::Error::msg)?,
                        "Evaluation",
                    )
                    .await?
                    .tenant_id,
            );
        }
        let knowledge = crate::startup::knowledge_for(&scratch_config, &store).await?;
        let models = crate::startup::models_for(&scratch_config)?;
        let responder = models.chat.clone().map(|chat| {
            crate::answer::KnowledgeResponder::new(
                knowledge.clone(),
                Some(chat),
                crate::startup::answer_settings(&scratch_config),
            )
        });
        let report = crate::knowledge::eval::answers(
            &knowledge,
            &tenants[0],
            &tenants[1],
            dir,
            off_topic,
            responder.as_ref(),
            generate,
        )
        .await;
        drop(responder);
        drop(knowledge);
        store.close().await;
        report
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn print_answers_report(r: &crate::knowledge::eval::AnswersReport) {
    println!(
        "{} documents ({} chunks), {} retrieval, relevance floor: similarity ≥ {:.2}",
        r.documents, r.chunks, r.mode, r.min_similarity
    );
    println!(
        "off-topic  {:>4} questions   no_answer {:.1} %",
        r.off_topic,
        r.off_topic_no_answer * 100.0
    );
    println!(
        "on-topic   {:>4} questions   recall@5 {:.3} (untitled {:.3})   no_answer {:.1} % (untitled {:.1} %)",
        r.on_topic,
        r.recall_at_5,
        r.untitled_recall_at_5,
        r.on_topic_no_answer * 100.0,
        r.untitled_no_answer * 100.0
    );
    if !r.sweep.is_empty() {
        println!("floor   off-topic no_answer   recall@5   untitled recall@5");
        for s in &r.sweep {
            println!(
                "{:.2}    {:>6.1} %             {:.3}      {:.3}",
                s.min_similarity,
                s.off_topic_no_answer * 100.0,
                s.recall_at_5,
                s.untitled_recall_at_5
            );
        }
    }
    for q in &r.off_topic_answered {
        println!("  off-topic but answered from the knowledge: {q}");
    }
    if let Some(g) = &r.generated {
        println!(
            "generated  {} answers: {} written by the model, {} cite a source, {} grounded; {:.1} % of {} checked sentences supported",
            g.answers,
            g.written,
            g.citing,
            g.grounded,
            g.sentences_supported_share * 100.0,
            g.sentences_checked
        );
    }
    println!(
        "ingest {:.1} s; retrieval p50 {:.2} ms, p99 {:.2} ms",
        r.ingest_seconds, r.query_p50_ms, r.query_p99_ms
    );
}

/// Where `switchboard chat` writes its log lines.
fn chat_log(config: &Config) -> PathBuf {
    config.data_dir.join("logs").join("chat.log")
}

/// Prints the answer as it is written, and keeps what was printed so that the stored answer is
/// printed again only when it differs (a fallback after the model failed mid-way).
#[derive(Default)]
struct Terminal {
    printed: std::sync::Mutex<String>,
}

impl Terminal {
    fn take(&self) -> String {
        std::mem::take(&mut *self.printed.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl crate::answer::Deltas for Terminal {
    fn delta(&self, text: &str) {
        use std::io::Write;
        self.printed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_str(text);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    fn reset(&self) {
        self.take();
        println!("\n[the model stopped answering; falling back]");
    }
}

/// The tenant's responder, streaming to the terminal.
struct TerminalResponder(Arc<dyn crate::answer::Responder>, Arc<Terminal>);

#[async_trait::async_trait]
impl crate::answer::Responder for TerminalResponder {
    async fn respond(&self, turn: &crate::answer::Turn) -> anyhow::Result<crate::answer::Answer> {
        self.0.respond_streaming(turn, self.1.as_ref()).await
    }
}

async fn chat(mut config: Config, tenant: &str, contact: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    anyhow::ensure!(!contact.trim().is_empty(), "--as: a name is needed");
    let _lock = crate::startup::DataDirLock::acquire(&config.data_dir, "chat").map_err(|e| {
        anyhow::anyhow!(
            "{e:#}. Nothing was changed. While the gateway runs, talk to the bot through it: its /demo page, or POST /v1/messages"
        )
    })?;
    {
        let store = open_store(&config).await?;
        let found = find_tenant(&store, tenant).await;
        store.close().await;
        found?;
    }
    // Nothing listens for the outside: the gateway's own port stays free for `serve`.
    config.listen = "127.0.0.1:0".into();
    let wait = std::time::Duration::from_millis(
        config.llm.timeout_ms + config.llm.first_token_timeout_ms + 30_000,
    );
    let log = chat_log(&config);
    let terminal = Arc::new(Terminal::default());
    let printer = terminal.clone();
    let app = Application::build_with(
        config,
        Box::new(move |knowledge, models, settings| {
            Arc::new(TerminalResponder(
                Arc::new(crate::answer::KnowledgeResponder::new(
                    knowledge.clone(),
                    models.chat.clone(),
                    settings,
                )),
                printer,
            ))
        }),
    )
    .await?;
    let store = app.store().clone();
    let tenant = find_tenant(&store, tenant).await?;
    eprintln!("logs:    {}", log.display());
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
            terminal.take();
            let ingested = ingest.accept(&channel, message).await?;
            print!("bot> ");
            {
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
            match router
                .wait_processed(&tenant.id, &ingested.message_id, wait)
                .await?
            {
                Some(Some(reply)) => {
                    // What was stored is the answer: printed once, as it streamed; printed
                    // whole only if nothing streamed or the stored text differs (a fallback).
                    let streamed = terminal.take();
                    if streamed.trim() == reply.text.trim() {
                        println!();
                    } else {
                        if !streamed.is_empty() {
                            println!();
                        }
                        println!("{}", reply.text.replace('\n', "\n     "));
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

/// The tenant a user named, or an error in the user's words.
async fn find_tenant(store: &Store, typed: &str) -> anyhow::Result<crate::store::tenants::Tenant> {
    if let Some(tenant) = store.tenant_by_slug(typed).await? {
        return Ok(tenant);
    }
    if store.tenant_count().await? == 0 {
        anyhow::bail!(
            "there is no tenant `{typed}`: this data directory has no tenants yet. Run `switchboard serve` once (it creates tenant `demo` with its knowledge), or `switchboard tenant create {typed}`"
        );
    }
    anyhow::bail!("there is no tenant `{typed}` (`switchboard tenant list` shows them)")
}

/// The data directory's lock for a command that writes the vector store, refused while
/// `serve` (or another such command) runs on it — before anything is changed.
fn lock_beside_serve(config: &Config, what: &str) -> anyhow::Result<crate::startup::DataDirLock> {
    crate::startup::DataDirLock::acquire(&config.data_dir, what).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}. Nothing was changed. While the gateway runs, manage knowledge through it: curl -H \"Authorization: Bearer $ADMIN_KEY\" -F file=@notes.md http://{}/v1/knowledge/documents",
            config.listen
        )
    })
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database_url(), 2).await?;
    store.migrate().await?;
    Ok(store)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let _lock = crate::startup::DataDirLock::acquire(
        &config.data_dir,
        &format!("serve on http://{}", config.listen),
    )?;
    let store_line = describe_store(&config);
    let app = Application::build(config.clone())
        .await
        .context("starting the gateway")?;
    let addr = app.local_addr()?;
    eprintln!("store:   {store_line}");
    eprintln!("vectors: {}", app.knowledge().describe());
    eprintln!("llm:     {}", app.models().describe().await);
    eprintln!("runtime: {}", describe_runtime());
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
        // The demo tenant answers from the coaching notes built into the binary.
        let outcomes =
            crate::knowledge::files::ingest_demo(app.knowledge(), &demo.tenant_id).await?;
        let chunks: i64 = outcomes.iter().flatten().map(|o| o.chunks).sum();
        let failed = outcomes.iter().filter(|o| o.is_err()).count();
        let names: Vec<&str> = crate::knowledge::files::DEMO_KNOWLEDGE
            .iter()
            .map(|(name, _)| *name)
            .collect();
        eprintln!(
            "demo knowledge: {} documents built into the binary ({}), {chunks} chunks{}",
            outcomes.len() - failed,
            names.join(", "),
            if failed > 0 {
                format!("; {failed} failed")
            } else {
                String::new()
            }
        );
        match crate::programs::load_demo(app.store(), &demo.tenant_id).await {
            Ok(name) => eprintln!(
                "demo program: \"{name}\" (send /join sleep in the widget or `switchboard chat`)"
            ),
            Err(e) => eprintln!("demo program: not loaded ({e:#})"),
        }
        println!();
        println!("  export ADMIN_KEY={}", demo.admin_key);
        println!("  (the README's curl commands use $ADMIN_KEY)");
    }
    eprintln!("listening on http://{addr}");
    if app.store().tenant_by_slug("demo").await?.is_some() {
        eprintln!("demo:    http://{addr}/demo (the web widget of tenant `demo`)");
    }
    app.run_until_stopped(shutdown_signal()).await
}

/// "sqlite at ./data/switchboard.db" / "postgres at host:port/db" — never the password.
/// Which scheduler runs the tasks (chosen in `main.rs` by the CPUs the process may use).
fn describe_runtime() -> String {
    let handle = tokio::runtime::Handle::current();
    match handle.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => {
            "one CPU allowed: every task on one thread".to_owned()
        }
        _ => format!("{} worker threads", handle.metrics().num_workers()),
    }
}

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
