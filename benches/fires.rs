//! The proactive engine: due fires dispatched per second (claim, re-check, message and outbox
//! row, enrolment moved, fire closed — all of `Programs::run_due`), with `BENCH_FIRES_SCHEDULED`
//! fires in the table (default 1,000,000) of which `BENCH_FIRES_DUE` (default 20,000) are due.
//! SQLite, and PostgreSQL with 1 and 3 engines sharing the database (each engine with its own
//! connection pool, as separate gateways would have; set `SWITCHBOARD_BENCH_POSTGRES_URL`).
//! Prints the query plan of the next-due lookup and the claim, and the process's peak RSS.
//!
//! Run: `cargo bench --bench fires`. Figures go to docs/BENCHMARKS.md.

mod support;

use std::time::Instant;

use serde_json::json;
use sqlx::Row;
use support::env_or;
use switchboard::core::TenantSlug;
use switchboard::programs::Programs;
use switchboard::store::{Backend, Store};
use switchboard_channel::Secret;

const T0: i64 = 1_800_000_000_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scheduled = env_or("BENCH_FIRES_SCHEDULED", 1_000_000) as i64;
    let due = env_or("BENCH_FIRES_DUE", 20_000) as i64;
    println!("fires bench: {scheduled} fires scheduled, {due} due");
    println!("{:<22} {:>12} {:>12}", "store", "fires/s", "elapsed");
    let dir = tempfile::tempdir()?;
    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fires.db").display()
    );
    run("sqlite", &sqlite, scheduled, due, 1).await?;
    match std::env::var("SWITCHBOARD_BENCH_POSTGRES_URL") {
        Ok(admin) if !admin.is_empty() => {
            for engines in [1, 3] {
                let url = support::fresh_postgres(
                    &admin,
                    &format!("sb_bench_fires_{}_{engines}", std::process::id()),
                )
                .await?;
                run(
                    &format!("postgres, {engines} engine(s)"),
                    &url,
                    scheduled,
                    due,
                    engines,
                )
                .await?;
            }
        }
        _ => println!("postgres skipped: set SWITCHBOARD_BENCH_POSTGRES_URL"),
    }
    println!("peak RSS {} MiB", peak_rss_kib() / 1024);
    Ok(())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// A tenant, a published one-message program, and `scheduled` enrolments each with a fire;
/// `due` of them due at `T0`, the rest spread over the following year.
async fn fill(store: &Store, scheduled: i64, due: i64) -> anyhow::Result<()> {
    let tenant = store
        .create_tenant(
            &TenantSlug::parse("bench").map_err(anyhow::Error::msg)?,
            "Bench",
        )
        .await?;
    let definition = json!({ "name": "Ping", "channels": ["api"], "steps": [
        { "id": "w", "type": "wait", "for": "1h" },
        { "id": "ping", "type": "message", "text": "ping" } ] })
    .to_string();
    let program = store
        .create_program(&tenant.tenant_id, "Ping", &definition)
        .await?;
    store
        .publish_program(&tenant.tenant_id, &program.id)
        .await?;
    let settings = json!({ "quiet_hours": null, "max_proactive_per_day": 1000 });
    store
        .set_program_settings(&tenant.tenant_id, &settings)
        .await?;
    let channel = store.api_channel(&tenant.tenant_id).await?.id;
    let pool = store.pool();
    // One statement per table, rows made by a recursive CTE (both stores speak it).
    let series = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)";
    let statements = [
        format!("{series} INSERT INTO contact (id, tenant_id, created_at) SELECT 'c' || i, $2, 0 FROM n"),
        format!(
            "{series} INSERT INTO contact_identity (id, tenant_id, contact_id, channel_id, external_id, created_at)
             SELECT 'i' || i, $2, 'c' || i, $3, 'x' || i, 0 FROM n"
        ),
        format!(
            "{series} INSERT INTO enrollment (id, tenant_id, program_id, version, contact_id, channel_id, status, step, waiting, epoch, started_at, updated_at)
             SELECT 'e' || i, $2, $4, 1, 'c' || i, $3, 'active', 'w', 'wait', 1, 0, 0 FROM n"
        ),
        format!(
            "{series} INSERT INTO fire (id, tenant_id, enrollment_id, contact_id, kind, step, version, epoch, intended_at, due_at, created_at)
             SELECT 'f' || i, $2, 'e' || i, 'c' || i, 'step', 'w', 1, 1,
                    CASE WHEN i <= $5 THEN $6 ELSE $6 + 60000 + i * 31 END,
                    CASE WHEN i <= $5 THEN $6 ELSE $6 + 60000 + i * 31 END, 0 FROM n"
        ),
    ];
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(scheduled)
            .bind(&tenant.tenant_id)
            .bind(&channel)
            .bind(&program.id)
            .bind(due)
            .bind(T0)
            .execute(pool)
            .await?;
    }
    Ok(())
}

async fn run(
    name: &str,
    url: &str,
    scheduled: i64,
    due: i64,
    engines: usize,
) -> anyhow::Result<()> {
    let store = Store::connect(&Secret::new(url), 8).await?;
    store.migrate().await?;
    let filling = Instant::now();
    fill(&store, scheduled, due).await?;
    eprintln!(
        "{name}: {scheduled} fires written in {:.1} s",
        filling.elapsed().as_secs_f64()
    );
    explain(&store).await?;
    let mut all = Vec::new();
    for _ in 0..engines {
        let store = Store::connect(&Secret::new(url), 8).await?;
        let programs = Programs::new(
            store,
            std::sync::Arc::new(tokio::sync::Notify::new()),
            "UTC",
            None,
        );
        programs.clock().set(T0);
        all.push(programs);
    }
    let started = Instant::now();
    let runs = all.iter().map(|p| p.run_due());
    let done: usize = futures::future::join_all(runs)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .sum();
    let elapsed = started.elapsed();
    let sent: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM fire WHERE status = 'done' AND sent = 1")
            .fetch_one(store.pool())
            .await?
            .try_get("n")?;
    anyhow::ensure!(sent == due, "{name}: {sent} fires sent, {due} due");
    println!(
        "{name:<22} {:>12.0} {:>10.2} s   ({done} processed)",
        due as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// The plans of the next-due lookup and the claim: both on the `fire_due` index.
async fn explain(store: &Store) -> anyhow::Result<()> {
    let (prefix, claim_suffix) = match store.backend() {
        Backend::Sqlite => ("EXPLAIN QUERY PLAN ", ""),
        Backend::Postgres => ("EXPLAIN ", " FOR UPDATE SKIP LOCKED"),
    };
    for (what, sql) in [
        (
            "next due",
            "SELECT MIN(due_at) AS due FROM fire WHERE status = 'pending'".to_owned(),
        ),
        (
            "claim",
            format!(
                "SELECT id FROM fire WHERE status = 'pending' AND due_at <= {T0} ORDER BY due_at, id LIMIT 64{claim_suffix}"
            ),
        ),
    ] {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{prefix}{sql}")))
            .fetch_all(store.pool())
            .await?;
        let plan: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                r.try_get::<String, _>("detail")
                    .or_else(|_| r.try_get::<String, _>("QUERY PLAN"))
                    .ok()
            })
            .collect();
        eprintln!("  plan of the {what}: {}", plan.join(" | "));
    }
    Ok(())
}
