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
    eprintln!("vectors: none yet (knowledge retrieval is not part of this build)");
    eprintln!("llm:     not used yet: replies come from the built-in no-knowledge responder");
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
