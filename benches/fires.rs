//! The proactive engine, the way a user runs it: the released `switchboard serve` binary, 1 or 3
//! processes on one database, dispatching due fires (claim, re-check, message and outbox row,
//! enrolment moved, fire closed) with `BENCH_FIRES_SCHEDULED` fires in the table (default
//! 1,000,000) of which `BENCH_FIRES_DUE` (default 20,000) fall due together. The baseline is a
//! known job queue on the same PostgreSQL in the same run: pg-boss (`benches/peers/pgboss`), no-op
//! jobs, the same number due among as many scheduled, with as many worker processes. Both sides are
//! pinned to the same cores (`taskset -c $BENCH_CPUS`, default `1`) and alternate, A/B/A/B, for
//! `BENCH_ROUNDS` rounds (default 2). pg-boss fetches `BENCH_PGBOSS_BATCH` jobs (default 1,000) per
//! poll: a worker sleeps out its polling interval (0.5 s at least) even after a full batch, so at
//! our batch of 64 it would be held to 128 jobs/s by its timer, not by the database.
//!
//! Dispatch rate = due / (last fire done − the moment they fell due): the processes are started
//! and ready before the fires fall due, so start-up is not counted (pg-boss likewise: its first
//! job started → its last completed, from its own table). Prints the query plans of the next-due
//! lookup and the claim, and the processes' anonymous RSS (`RssAnon`: not the SQLite file's
//! mapped pages) at the end, at 100,000 and at `SCHEDULED` fires in the table (memory must not
//! grow with the table).
//!
//! Run: `SWITCHBOARD_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench
//! --bench fires` (without the URL only SQLite runs). Figures go to docs/BENCHMARKS.md.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Row;
use support::env_or;
use switchboard::core::TenantSlug;
use switchboard::store::{Backend, Store, now_ms};
use switchboard_channel::Secret;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
/// How long after the fill the due fires fall due: the processes start meanwhile.
const LEAD_MS: i64 = 20_000;

struct Setup {
    name: String,
    url: String,
    processes: usize,
    scheduled: i64,
    /// Run pg-boss beside it (PostgreSQL only).
    baseline: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scheduled = env_or("BENCH_FIRES_SCHEDULED", 1_000_000) as i64;
    let due = env_or("BENCH_FIRES_DUE", 20_000) as i64;
    let rounds = env_or("BENCH_ROUNDS", 2);
    let cpus = std::env::var("BENCH_CPUS").unwrap_or_else(|_| "1".into());
    println!(
        "fires bench: {scheduled} fires scheduled, {due} due, {rounds} rounds, cores {cpus}, binary {BIN}"
    );
    let dir = tempfile::tempdir()?;
    let sqlite = |name: &str| {
        format!(
            "sqlite://{}?mode=rwc",
            dir.path().join(format!("{name}.db")).display()
        )
    };
    let mut setups = Vec::new();
    if env_or("BENCH_FIRES_SMALL", 1) == 1 {
        setups.push(Setup {
            name: "sqlite, 100k fires".into(),
            url: sqlite("small"),
            processes: 1,
            scheduled: scheduled.min(100_000),
            baseline: false,
        });
    }
    setups.extend([Setup {
        name: "sqlite".into(),
        url: sqlite("fires"),
        processes: 1,
        scheduled,
        baseline: false,
    }]);
    let admin = std::env::var("SWITCHBOARD_BENCH_POSTGRES_URL").unwrap_or_default();
    if admin.is_empty() {
        println!("postgres skipped: set SWITCHBOARD_BENCH_POSTGRES_URL");
    } else {
        for processes in [1, 3] {
            let name = format!("sb_bench_fires_{}_{processes}", std::process::id());
            setups.push(Setup {
                name: format!("postgres, {processes} process(es)"),
                url: support::fresh_postgres(&admin, &name).await?,
                processes,
                scheduled,
                baseline: true,
            });
        }
    }
    let pgboss = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/pgboss");
    let have_pgboss = pgboss.join("node_modules/pg-boss").exists();
    if !have_pgboss && !admin.is_empty() {
        println!(
            "pg-boss baseline skipped: run `npm ci` in {}",
            pgboss.display()
        );
    }
    println!(
        "{:<26} {:>6} {:>12} {:>12} {:>8} {:>10}",
        "setup", "round", "ours fires/s", "pg-boss/s", "ratio", "anon RSS"
    );
    for setup in &setups {
        let store = Store::connect(&Secret::new(setup.url.clone()), 4).await?;
        store.migrate().await?;
        let filling = Instant::now();
        // Filled due in a month; each round moves the due set to just after its processes start.
        fill(&store, setup.scheduled, due, now_ms() + 30 * 86_400_000).await?;
        eprintln!(
            "{}: {} fires written in {:.1} s",
            setup.name,
            setup.scheduled,
            filling.elapsed().as_secs_f64()
        );
        explain(&store).await?;
        let boss_url = if setup.baseline && have_pgboss {
            let name = format!("sb_bench_pgboss_{}_{}", std::process::id(), setup.processes);
            Some(support::fresh_postgres(&admin, &name).await?)
        } else {
            None
        };
        for round in 0..rounds {
            let boss = match &boss_url {
                Some(url) => Some(pg_boss(
                    &pgboss,
                    &cpus,
                    url,
                    if round == 0 { setup.scheduled } else { 0 },
                    due,
                    setup.processes,
                )?),
                None => None,
            };
            let t_due = now_ms() + LEAD_MS;
            reset(&store, t_due).await?;
            let (rate, rss) = ours(&store, setup, &cpus, due, t_due).await?;
            let ratio = boss
                .map(|b| format!("{:.2}×", rate / b))
                .unwrap_or_default();
            println!(
                "{:<26} {:>6} {:>12.0} {:>12} {:>8} {:>7} MiB",
                setup.name,
                round + 1,
                rate,
                boss.map(|b| format!("{b:.0}"))
                    .unwrap_or_else(|| "-".into()),
                ratio,
                rss / 1024
            );
        }
        store.close().await;
    }
    Ok(())
}

/// A tenant with no quiet hours and a high cap, a published wait-then-message program, and
/// `scheduled` enrolments each with a fire: `due` of them due at `t_due` (marked by
/// `created_at = 1`), the rest spread over the hours after.
async fn fill(store: &Store, scheduled: i64, due: i64, t_due: i64) -> anyhow::Result<()> {
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
    let settings = json!({ "quiet_hours": null, "max_proactive_per_day": 100_000 });
    store
        .set_program_settings(&tenant.tenant_id, &settings)
        .await?;
    let channel = store.api_channel(&tenant.tenant_id).await?.id;
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
                    CASE WHEN i <= $5 THEN $6 ELSE $6 + 3600000 + i * 31 END,
                    CASE WHEN i <= $5 THEN $6 ELSE $6 + 3600000 + i * 31 END,
                    CASE WHEN i <= $5 THEN 1 ELSE 0 END FROM n"
        ),
    ];
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(scheduled)
            .bind(&tenant.tenant_id)
            .bind(&channel)
            .bind(&program.id)
            .bind(due)
            .bind(t_due)
            .execute(store.pool())
            .await?;
    }
    // A table that grew to a million rows over time has been analysed by autovacuum; one loaded
    // in a second has not, and PostgreSQL would plan on empty-table estimates.
    if store.backend() == Backend::Postgres {
        sqlx::query("ANALYZE").execute(store.pool()).await?;
    }
    Ok(())
}

/// Puts the round's fires (those marked `created_at = 1`) back: their enrolments at the wait
/// again, the fires pending and due at `t_due`.
async fn reset(store: &Store, t_due: i64) -> anyhow::Result<()> {
    for sql in [
        "UPDATE enrollment SET status = 'active', step = 'w', waiting = 'wait', epoch = 1,
                steps_done = 0, completed_at = NULL
         WHERE id IN (SELECT enrollment_id FROM fire WHERE created_at = 1)",
        "UPDATE fire SET status = 'pending', sent = 0, done_at = NULL, reason = NULL,
                intended_at = $1, due_at = $1
         WHERE created_at = 1",
    ] {
        sqlx::query(sql).bind(t_due).execute(store.pool()).await?;
    }
    Ok(())
}

/// Starts the gateway processes, waits until the due fires are all done; the dispatch rate and
/// the largest anonymous RSS (KiB) of the processes at the end.
async fn ours(
    store: &Store,
    setup: &Setup,
    cpus: &str,
    due: i64,
    t_due: i64,
) -> anyhow::Result<(f64, u64)> {
    let mut children = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..setup.processes {
        let data = tempfile::tempdir()?;
        children.push(Gateway::start(&setup.url, data.path(), cpus).await?);
        dirs.push(data);
    }
    let ready = now_ms();
    anyhow::ensure!(
        ready < t_due,
        "{}: the processes were ready {} ms after the fires fell due; raise LEAD_MS",
        setup.name,
        ready - t_due
    );
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MAX(done_at) AS last FROM fire
             WHERE created_at = 1 AND status = 'done' AND sent = 1",
        )
        .fetch_one(store.pool())
        .await?;
        let done: i64 = row.try_get("n")?;
        if done >= due {
            let last: Option<i64> = row.try_get("last")?;
            let rss = children
                .iter()
                .map(Gateway::anon_rss_kib)
                .max()
                .unwrap_or(0);
            drop(children);
            let elapsed = (last.unwrap_or(t_due) - t_due).max(1) as f64 / 1000.0;
            return Ok((due as f64 / elapsed, rss));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}: only {done} of {due} fires done after 15 minutes",
            setup.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One pg-boss round on its own database (`scheduled` future jobs added first when non-zero):
/// jobs per second.
fn pg_boss(
    dir: &Path,
    cpus: &str,
    url: &str,
    scheduled: i64,
    due: i64,
    workers: usize,
) -> anyhow::Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", cpus, "node", "bench.mjs", "--url", url])
        .args(["--scheduled", &scheduled.to_string()])
        .args(["--due", &due.to_string()])
        .args(["--workers", &workers.to_string()])
        .args(["--batch", &env_or("BENCH_PGBOSS_BATCH", 1000).to_string()])
        .args(["--rounds", "1"])
        .current_dir(dir)
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "pg-boss bench failed");
    let line = String::from_utf8_lossy(&out.stdout);
    let result: Value = line
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| anyhow::anyhow!("pg-boss printed no result: {line}"))?;
    eprintln!("  pg-boss: {result}");
    result["jobs_per_s"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("no jobs_per_s in {result}"))
}

/// `switchboard serve` pinned to `cpus`, on `url`, with its own data directory.
struct Gateway {
    child: Child,
}

impl Gateway {
    async fn start(url: &str, data: &Path, cpus: &str) -> anyhow::Result<Gateway> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("taskset")
            .args(["-c", cpus, BIN, "serve"])
            .env("SWITCHBOARD_DATABASE_URL", url)
            .env("SWITCHBOARD_DATA_DIR", data)
            .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("SWITCHBOARD_LLM_PROVIDER", "none")
            .env_remove("SWITCHBOARD_CONFIG")
            .env("SWITCHBOARD_EMBED_MODEL", "none")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let gateway = Gateway { child };
        let http = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{port}/readyz");
        for _ in 0..300 {
            if http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(gateway);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the gateway did not become ready in 15 s")
    }

    /// Anonymous resident memory (KiB): the process's own, without the pages of the SQLite
    /// file it maps (`mmap_size`), which the kernel can drop at any time.
    fn anon_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("RssAnon:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
                "SELECT id FROM fire WHERE status = 'pending' AND due_at <= {} ORDER BY due_at, id LIMIT 64{claim_suffix}",
                now_ms()
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
