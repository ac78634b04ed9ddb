//! SQL storage: SQLite (default, WAL) or PostgreSQL, chosen by the database URL.
//!
//! Where it sits: under every flow step; nothing here knows about HTTP or channels' wire formats.
//! One set of `$n`-placeholder queries runs on both backends through sqlx's `Any` driver; where the
//! dialects differ (claiming rows with `FOR UPDATE SKIP LOCKED`), the query is chosen by
//! [`Backend`]. Column conventions are in `migrations/*/0001_foundation.sql`: TEXT ids, BIGINT
//! millisecond times, INTEGER flags, TEXT JSON.
//!
//! Write transactions go through [`Store::begin_write`]. On SQLite they all run on one dedicated
//! connection and start with `BEGIN IMMEDIATE`: SQLite has one writer at a time anyway, and
//! queuing writers here (instead of in SQLite's sleeping busy handler) keeps latency flat under
//! load, keeps the writer's page cache warm, and makes a read-then-write transaction unable to
//! fail with `SQLITE_BUSY` halfway.

pub mod answers;
pub mod batch;
mod bulk;
pub mod cache;
pub mod channels;
pub mod contacts;
pub mod deliveries;
pub mod fire_batch;
pub mod knowledge;
pub mod mail;
pub mod messages;
pub mod moderation;
pub mod programs;
pub mod sealing;
pub mod sqlite_alloc;
pub mod sqlite_wal_writes;
pub mod tenants;
pub mod tick;
pub mod widget;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

pub use mail::sha256_hex;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Executor, Transaction};
use switchboard_channel::Secret;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long another process's key revocation may take to be seen here.
const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long another process's channel reconfiguration may take to be seen here.
const CHANNEL_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections reserved for write transactions on Postgres: the write batches (two ingest, two
/// turn completion), the outbox's claim and record, and room for the rest.
const POSTGRES_WRITE_CONNECTIONS: u32 = 8;

/// How long a tenant's name, prompt templates and whether it has documents are remembered for
/// its answers (another process's change is seen within this time).
pub const ANSWER_CONTEXT_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a contact's open conversation is remembered by ingest.
const CONVERSATION_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Where write transactions run: on SQLite a pool of one connection (see the module docs),
    /// on Postgres a small pool of its own.
    writer: AnyPool,
    /// API key hash → principal.
    keys: Arc<cache::TtlCache<tenants::Principal>>,
    /// Channel id, and `api:<tenant id>`, → channel row.
    channels: Arc<cache::TtlCache<channels::Channel>>,
    /// `<channel id> <external id>` → the contact's open conversation on that channel. A stale
    /// entry (the conversation was closed) is caught by the ingest's guarded update.
    open_conversations: Arc<cache::TtlCache<String>>,
    /// Tenant id → what its answers need besides the question (see [`answers::AnswerContext`]).
    answer_contexts: Arc<cache::TtlCache<Arc<answers::AnswerContext>>>,
    /// Seals channel credentials at rest (see [`sealing`]); `None`: stored as given (tools and
    /// tests that write no channels).
    sealer: Option<Arc<sealing::Sealer>>,
    /// SQLite: the writer that commits inbound messages, completed turns and delivery outcomes
    /// together (see [`tick`]), started at first use. `None` on PostgreSQL, and in the writer's
    /// own copy of the store.
    tick: Option<Arc<std::sync::OnceLock<tick::Tick>>>,
    /// Batches the multi-row fast paths handed to the general path (see [`bulk`]).
    fallbacks: Arc<Fallbacks>,
}

/// How many write batches the multi-row fast paths (see [`bulk`]) handed to the general,
/// item-by-item path — a redelivery, a closed conversation, a turn completed twice among them.
/// Also counted in `switchboard_write_fallbacks_total`; kept per store so that a test can tell
/// which path its own batch took.
#[derive(Debug, Default)]
pub struct Fallbacks {
    pub ingest: std::sync::atomic::AtomicU64,
    pub complete: std::sync::atomic::AtomicU64,
}

impl Fallbacks {
    pub(crate) fn count(counter: &std::sync::atomic::AtomicU64, write: &'static str) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("switchboard_write_fallbacks_total", "write" => write).increment(1);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// A write transaction (on SQLite it holds the one writer connection until committed or dropped).
pub struct WriteTx {
    pub tx: Transaction<'static, Any>,
    /// A savepoint released in name only: its `RELEASE` goes with the next savepoint's statement,
    /// or is left to the commit (which releases every savepoint) — one round trip to the
    /// connection fewer each time (on SQLite, a hop to the connection's thread and back).
    unreleased: Option<&'static str>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    /// Marks a point this transaction can return to with [`WriteTx::rollback_to`] (a fast path
    /// that found it cannot finish undoes its writes, and the general path runs in the same
    /// transaction). `name` must be a plain identifier.
    pub(crate) async fn savepoint(&mut self, name: &'static str) -> Result<(), sqlx::Error> {
        let sql = match self.unreleased.take() {
            Some(done) => format!("RELEASE SAVEPOINT {done}; SAVEPOINT {name}"),
            None => format!("SAVEPOINT {name}"),
        };
        (&mut *self.tx)
            .execute(sqlx::AssertSqlSafe(sql))
            .await
            .map(|_| ())
    }

    /// Forgets the savepoint `name`, keeping what was written since. (Its `RELEASE` is sent
    /// with the next savepoint, or not at all when the transaction commits first.)
    pub(crate) async fn release(&mut self, name: &'static str) -> Result<(), sqlx::Error> {
        match self.unreleased.replace(name) {
            Some(earlier) => (&mut *self.tx)
                .execute(sqlx::AssertSqlSafe(format!("RELEASE SAVEPOINT {earlier}")))
                .await
                .map(|_| ()),
            None => Ok(()),
        }
    }

    /// Undoes everything written since the savepoint `name`, and forgets it.
    pub(crate) async fn rollback_to(&mut self, name: &'static str) -> Result<(), sqlx::Error> {
        // A savepoint released in name only is one taken after `name` (taking one sends the
        // release of any before it): rolling back to `name` removes it too.
        self.unreleased = None;
        let sql = format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}");
        (&mut *self.tx)
            .execute(sqlx::AssertSqlSafe(sql))
            .await
            .map(|_| ())
    }
}

impl Store {
    /// Connects (creating the SQLite file and its directory if needed). Does not migrate.
    pub async fn connect(url: &Secret, max_connections: u32) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let url = url.expose();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!("database URL must start with sqlite:// or postgres://");
        };
        let options = AnyConnectOptions::from_str(url)
            .context("database URL is not valid")?
            .disable_statement_logging();
        let (pool, writer) = match backend {
            Backend::Sqlite => {
                // WAL frames written once per commit, not twice per page (see the module).
                sqlite_wal_writes::install();
                if let Some(dir) = sqlite_parent_dir(url) {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating data directory {}", dir.display()))?;
                }
                // WAL is a property of the file: set it once, on one connection, before the pool
                // opens several (changing it needs an exclusive lock).
                let mut conn = sqlx::AnyConnection::connect_with(&options)
                    .await
                    .context("opening the SQLite database")?;
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.close().await?;
                let readers = sqlite_pool(max_connections, false)
                    .connect_with(options.clone())
                    .await
                    .context("opening the SQLite pool")?;
                // One connection does every write: SQLite allows one writer at a time anyway, and
                // a single writer keeps its page cache warm (another connection's commit would
                // invalidate it). Its pool is the write lock; waiting writers queue fairly.
                let writer = sqlite_pool(1, true)
                    .acquire_timeout(std::time::Duration::from_secs(120))
                    .connect_with(options)
                    .await
                    .context("opening the SQLite writer")?;
                (readers, writer)
            }
            Backend::Postgres => {
                let readers = AnyPoolOptions::new()
                    .max_connections(max_connections)
                    .connect_with(options.clone())
                    .await
                    .context("connecting to PostgreSQL")?;
                // Writes get their own connections, so a crowd of reads can never queue in front
                // of the write batches that would let those readers' turns finish.
                // Their statements stay prepared: see `WRITER_SETTINGS_ON_POSTGRES`.
                let writer = AnyPoolOptions::new()
                    .max_connections(POSTGRES_WRITE_CONNECTIONS)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute(WRITER_SETTINGS_ON_POSTGRES).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
                    .context("connecting to PostgreSQL")?;
                (readers, writer)
            }
        };
        Ok(Store {
            pool,
            writer,
            backend,
            keys: Arc::new(cache::TtlCache::new(KEY_CACHE_TTL)),
            channels: Arc::new(cache::TtlCache::new(CHANNEL_CACHE_TTL)),
            open_conversations: Arc::new(cache::TtlCache::new(CONVERSATION_CACHE_TTL)),
            answer_contexts: Arc::new(cache::TtlCache::new(ANSWER_CONTEXT_TTL)),
            sealer: None,
            tick: (backend == Backend::Sqlite).then(|| Arc::new(std::sync::OnceLock::new())),
            fallbacks: Arc::default(),
        })
    }

    /// Seals channel credentials with `sealer` from now on.
    pub fn with_sealer(mut self, sealer: sealing::Sealer) -> Store {
        self.sealer = Some(Arc::new(sealer));
        self
    }

    /// Applies pending migrations of this backend.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .context("applying database migrations")
    }

    /// The tick writer (SQLite), started on first use; `None` where writes batch by kind.
    pub fn tick(&self) -> Option<&tick::Tick> {
        let cell = self.tick.as_ref()?;
        Some(cell.get_or_init(|| {
            tick::Tick::spawn(Store {
                tick: None,
                ..self.clone()
            })
        }))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Write batches this store's fast paths handed to the general path (see [`Fallbacks`]).
    pub fn fallbacks(&self) -> &Fallbacks {
        &self.fallbacks
    }

    /// How many write batches may run at once: one on SQLite (one writer), a few on Postgres.
    pub fn write_parallelism(&self) -> usize {
        match self.backend {
            Backend::Sqlite => 1,
            Backend::Postgres => 2,
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The write connections (one on SQLite). Writes go through [`Store::begin_write`]; this is
    /// for reading a write connection's own state (its prepared statements, its settings).
    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// Starts a write transaction (see the module docs for SQLite).
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        let tx = match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        };
        Ok(WriteTx {
            tx,
            unreleased: None,
        })
    }

    /// Readiness: the store answers a trivial query.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

/// Pool options for SQLite connections: durable commits, foreign keys, no memory-mapped reads;
/// `writer` for the one connection that writes (a larger page cache).
fn sqlite_pool(max_connections: u32, writer: bool) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max_connections)
        // A local file cannot drop a connection the way a server can: sqlx's liveness ping
        // before every checkout would be one more round trip to the connection's thread per
        // statement, for nothing.
        .test_before_acquire(false)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                // synchronous=FULL: a commit is on disk before we acknowledge anything.
                // temp_store=MEMORY: a savepoint's sub-journal (the tick's fast paths run under
                // savepoints) stays in memory instead of spilling past 64 KiB into a temporary
                // file that is created, written and unlinked per tick (the channels bench: −12 %
                // CPU per reply). Temporary tables for sorts without an index are in memory too.
                conn.execute(
                    "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                     PRAGMA busy_timeout = 10000; PRAGMA mmap_size = 0; \
                     PRAGMA temp_store = MEMORY;",
                )
                .await?;
                if writer {
                    // The writer's page cache: 32 MiB instead of SQLite's 2 MiB. Every message
                    // lands on a leaf of its conversation's index entries, so the writer's
                    // working set grows with the conversations in flight; at 2 MiB (and at 8)
                    // it re-read evicted pages from the WAL and the file on every tick. The
                    // readers keep the default: another connection's commit empties their cache
                    // anyway. Figures: docs/BENCHMARKS.md.
                    conn.execute("PRAGMA cache_size = -32768").await?;
                }
                Ok(())
            })
        })
}

fn sqlite_parent_dir(url: &str) -> Option<std::path::PathBuf> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_path_buf())
}

/// Milliseconds since the Unix epoch: the one time representation in the database.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new row id: UUIDv7, so ids sort by creation time. Its random bits come from `rand`'s
/// thread-local generator (uuid's `fast-rng`: ChaCha, seeded from the OS) rather than a
/// `getrandom` system call per id — three ids per reply made that 1 % of the gateway's CPU.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The settings of PostgreSQL's write connections. Every statement they run finds its rows by
/// key — ids, a conversation's pending deliveries, the due index — and stays prepared, so the
/// server plans it once per connection instead of at every execution (planning the write
/// batches' id-list updates cost it more than running them). A prepared statement settles on a
/// generic plan after five executions, and one settled on while the tables were small would
/// scan them whole ever after (see [`keep_plan`]); with sequential scans off, a generic plan
/// takes the index whatever the table's size (a table with no index for the statement, such as
/// a tenant's few channels, is still scanned). JIT off: a plan costed with sequential scans
/// discouraged can pass `jit_above_cost`, and compiling one costs more than any of these
/// statements. Story `the_writer_s_cached_plans_probe_indexes` asks the server for each of them.
pub const WRITER_SETTINGS_ON_POSTGRES: &str =
    "SELECT set_config('enable_seqscan', 'off', false), set_config('jit', 'off', false)";

/// Whether a statement that finds rows in growing tables (by id lists, joins, scans) may keep
/// its prepared plan: `.persistent(keep_plan(backend))`.
///
/// On SQLite, yes: its planner does not weigh table sizes without `ANALYZE`, and index lookups
/// stay index lookups. On PostgreSQL, no: a prepared statement settles on a generic plan after
/// five executions (and a statement without parameters at once) and keeps it for the
/// connection's life unless an `ANALYZE` of its tables invalidates it. One planned while the
/// tables were small — a new database, or any database where autovacuum is off — scans them
/// whole ever after: seen under load, `UPDATE message … WHERE id = ANY(…)` took 7 ms through a
/// sequential scan frozen when the table had a few pages. Not kept, the statement is parsed as
/// PostgreSQL's unnamed statement and planned for its values at every execution (a fraction of
/// a millisecond for these, and one more round trip). (The router's turn read is prepared on
/// both: its cached plan is index probes at any size; see `messages::turn_read_sql`. So are the
/// write connections' statements: see [`WRITER_SETTINGS_ON_POSTGRES`].)
pub(crate) fn keep_plan(backend: Backend) -> bool {
    backend == Backend::Sqlite
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Savepoints released in name only still behave as released: a later rollback returns to
    /// its own savepoint only, a release is sent before the next savepoint, and the commit keeps
    /// everything not rolled back.
    #[tokio::test]
    async fn deferred_savepoint_releases_keep_the_transaction_s_meaning() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let store = Store::connect(&Secret::new(url), 2).await.expect("store");
        let mut w = store.begin_write().await.expect("begin");
        (&mut *w.tx)
            .execute("CREATE TABLE t (v TEXT)")
            .await
            .expect("table");
        w.savepoint("a").await.expect("a");
        (&mut *w.tx)
            .execute("INSERT INTO t VALUES ('kept a')")
            .await
            .expect("insert");
        w.release("a").await.expect("release a");
        w.savepoint("b").await.expect("b, sent with a's release");
        (&mut *w.tx)
            .execute("INSERT INTO t VALUES ('undone b')")
            .await
            .expect("insert");
        w.rollback_to("b").await.expect("back to b");
        w.savepoint("c").await.expect("c");
        (&mut *w.tx)
            .execute("INSERT INTO t VALUES ('kept c')")
            .await
            .expect("insert");
        w.release("c").await.expect("release c");
        // Nested, released inner first, then a rollback to the outer one removes the inner
        // one's pending release too.
        w.savepoint("d").await.expect("d");
        w.savepoint("e").await.expect("e");
        (&mut *w.tx)
            .execute("INSERT INTO t VALUES ('undone e')")
            .await
            .expect("insert");
        w.release("e").await.expect("release e");
        w.rollback_to("d").await.expect("back to d");
        w.savepoint("f").await.expect("f after the rollback");
        w.release("f").await.expect("release f");
        w.commit().await.expect("commit");
        let rows: Vec<String> = sqlx::query_scalar("SELECT v FROM t ORDER BY v")
            .fetch_all(store.pool())
            .await
            .expect("read");
        assert_eq!(rows, ["kept a", "kept c"]);
        store.close().await;
    }

    /// The writer gets the larger page cache; readers keep SQLite's default; both keep the
    /// durability and integrity settings.
    #[tokio::test]
    async fn the_writer_and_the_readers_get_their_own_settings() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let store = Store::connect(&Secret::new(url), 2).await.expect("store");
        let pragma = |pool: AnyPool, name: &'static str| async move {
            sqlx::query_scalar::<_, i64>(name)
                .fetch_one(&pool)
                .await
                .expect(name)
        };
        assert_eq!(
            pragma(store.writer.clone(), "PRAGMA cache_size").await,
            -32768
        );
        assert_eq!(pragma(store.pool.clone(), "PRAGMA cache_size").await, -2000);
        for pool in [store.writer.clone(), store.pool.clone()] {
            // FULL = 2.
            assert_eq!(pragma(pool.clone(), "PRAGMA synchronous").await, 2);
            assert_eq!(pragma(pool, "PRAGMA foreign_keys").await, 1);
        }
        store.close().await;
    }

    /// The WAL's writes go out gathered, and what they hold is what SQLite wrote: a commit of
    /// many pages is read by another connection, survives a checkpoint that truncates the log
    /// and a reopening, and the file passes SQLite's integrity check.
    #[tokio::test]
    async fn gathered_wal_writes_keep_every_commit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = Secret::new(format!("sqlite://{}/t.db?mode=rwc", dir.path().display()));
        let store = Store::connect(&url, 2).await.expect("store");
        let mut w = store.begin_write().await.expect("begin");
        (&mut *w.tx)
            .execute("CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .await
            .expect("table");
        w.commit().await.expect("commit");
        let (flushes, gathered) = sqlite_wal_writes::counts();
        for round in 0..3 {
            let mut w = store.begin_write().await.expect("begin");
            sqlx::query(
                "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 500)
                 INSERT INTO t (n, v) SELECT $1 * 1000 + i, printf('%.500c', 'x') FROM k",
            )
            .bind(round)
            .execute(&mut *w.tx)
            .await
            .expect("rows");
            w.commit().await.expect("commit");
            let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
                .fetch_one(store.pool())
                .await
                .expect("read by a reader");
            assert_eq!(seen, (round + 1) * 500);
        }
        let (flushes_after, gathered_after) = sqlite_wal_writes::counts();
        // ~70 pages per commit, two writes each, went out in a few calls.
        let writes = gathered_after - gathered;
        let calls = flushes_after - flushes;
        assert!(writes >= 3 * 100, "{writes} writes gathered");
        assert!(calls * 10 < writes, "{writes} writes in {calls} calls");
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&store.writer)
            .await
            .expect("checkpoint");
        store.close().await;
        let store = Store::connect(&url, 2).await.expect("reopened");
        let (count, ok): (i64, String) = (
            sqlx::query_scalar("SELECT count(*) FROM t WHERE length(v) = 500")
                .fetch_one(store.pool())
                .await
                .expect("count"),
            sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_one(store.pool())
                .await
                .expect("integrity"),
        );
        assert_eq!((count, ok.as_str()), (1500, "ok"));
        store.close().await;
    }

    #[test]
    fn finds_the_directory_of_a_sqlite_file() {
        assert_eq!(
            sqlite_parent_dir("sqlite://./data/switchboard.db?mode=rwc"),
            Some("./data".into())
        );
        assert_eq!(sqlite_parent_dir("sqlite::memory:"), None);
        assert_eq!(sqlite_parent_dir("sqlite://x.db"), None);
    }
}

/// SQLite's plan for a statement, for tests that hold a lookup to its index.
#[cfg(test)]
pub(crate) mod plans {
    use super::*;
    use sqlx::Row;

    /// A migrated SQLite store in `dir`.
    pub(crate) async fn sqlite_store(dir: &std::path::Path) -> Store {
        let url = format!("sqlite://{}/plans.db?mode=rwc", dir.display());
        let store = Store::connect(&Secret::new(url), 2).await.expect("store");
        store.migrate().await.expect("migrate");
        store
    }

    /// The steps (`detail`) of `EXPLAIN QUERY PLAN sql`, its `args` parameters bound to text.
    pub(crate) async fn sqlite_plan(store: &Store, sql: &str, args: usize) -> Vec<String> {
        let mut explain = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
        for _ in 0..args {
            explain = explain.bind("x");
        }
        explain
            .fetch_all(store.pool())
            .await
            .expect("plan")
            .iter()
            .map(|row| row.try_get::<String, _>("detail").expect("detail"))
            .collect()
    }

    /// SQLite's plan for lookups in tables that grow with traffic, run per widget connect, per
    /// inbound email and per `/link` message: each searches the index made for it (migration
    /// 0014), where before it read the table (or the tenant's whole audit log) in full.
    #[tokio::test]
    async fn growing_tables_are_searched_by_their_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = sqlite_store(dir.path()).await;
        for (sql, args, index) in [
            (widget::WIDGET_CONVERSATION, 2, "conversation_by_contact"),
            (mail::TOKENS_EXPIRE, 2, "webhook_token_by_age"),
            (contacts::LINK_FAILURES, 3, "event_by_kind"),
        ] {
            let plan = sqlite_plan(&store, sql, args).await;
            assert!(
                plan.iter().all(|step| !step.starts_with("SCAN ")),
                "{sql}\nscans: {plan:?}"
            );
            assert!(
                plan.iter()
                    .any(|step| step.contains(&format!("INDEX {index} "))),
                "{sql}\nnot by {index}: {plan:?}"
            );
        }
    }

    /// The widget's acknowledgements, a tick's together: each conversation's messages found by
    /// the `(conversation_id, seq)` key, never by reading `message` whole.
    #[tokio::test]
    async fn widget_acknowledgements_search_their_conversation_by_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = sqlite_store(dir.path()).await;
        let plan = sqlite_plan(&store, widget::WIDGET_ACKS, 1).await;
        assert!(
            plan.iter().all(|step| !step.starts_with("SCAN message")),
            "scans message: {plan:?}"
        );
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH message USING INDEX")
                    && step.contains("conversation_id=? AND seq<?")),
            "not by (conversation_id, seq): {plan:?}"
        );
    }

    /// SQLite's plan for lookups outside the message path that read a growing table whole
    /// before migration 0015: the hand-off timeout's sweep (every tenant, every minute), a
    /// program's statistics, the admin listing of deliveries, and a `/link` merge's moves.
    #[tokio::test]
    async fn admin_and_sweep_lookups_are_searched_by_their_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = sqlite_store(dir.path()).await;
        // (statement, its parameters, the index it must search, whether it may sort: the queue
        // and the dead letters are few, the delivered history is not).
        let mut statements = vec![
            (
                moderation::RESUME_STALE_HANDOFFS,
                3,
                Some("conversation_in_handoff"),
                false,
            ),
            (
                programs::ENROLLMENTS_BY_STATUS,
                1,
                Some("enrollment_by_program"),
                false,
            ),
            (
                programs::STOPPED_BY_STEP,
                1,
                Some("enrollment_by_program"),
                true,
            ),
            (
                programs::COMPLETION_TIMES,
                1,
                Some("enrollment_by_program"),
                false,
            ),
            (programs::ENGAGEMENT, 1, Some("enrollment_by_program"), true),
            (
                deliveries::DELIVERIES_BY_STATUS,
                3,
                Some("delivery_due"),
                true,
            ),
            (
                deliveries::DELIVERED_NEWEST,
                2,
                Some("delivery_by_tenant"),
                false,
            ),
        ];
        statements.extend(
            contacts::MERGE_MOVES
                .iter()
                .map(|sql| (*sql, 2, None, false)),
        );
        for (sql, args, index, may_sort) in statements {
            let plan = sqlite_plan(&store, sql, args).await;
            assert!(
                plan.iter().all(|step| !step.starts_with("SCAN ")),
                "{sql}\nscans: {plan:?}"
            );
            assert!(
                may_sort || !plan.iter().any(|step| step.contains("TEMP B-TREE")),
                "{sql}\nsorts: {plan:?}"
            );
            if let Some(index) = index {
                assert!(
                    plan.iter()
                        .any(|step| step.contains(&format!("INDEX {index} "))),
                    "{sql}\nnot by {index}: {plan:?}"
                );
            }
        }
    }

    /// Rows the gateway deletes — a contact merged away, a document — are checked against every
    /// table whose foreign key names them, each check a lookup by the referencing column: every
    /// such column leads an index (not a partial one, which the checks cannot use), or each
    /// delete reads those tables whole.
    #[tokio::test]
    async fn deleted_rows_keys_are_checked_by_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = sqlite_store(dir.path()).await;
        let keys = sqlx::query(
            "SELECT m.name AS child, f.\"from\" AS col, f.\"table\" AS parent
             FROM sqlite_schema m, pragma_foreign_key_list(m.name) f
             WHERE m.type = 'table' AND f.\"table\" IN ('contact', 'document')",
        )
        .fetch_all(store.pool())
        .await
        .expect("keys");
        assert!(
            keys.len() >= 7,
            "the keys that name a contact: {}",
            keys.len()
        );
        for key in keys {
            let child: String = key.try_get("child").expect("child");
            let col: String = key.try_get("col").expect("col");
            let parent: String = key.try_get("parent").expect("parent");
            let leads: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM pragma_index_list($1) l, pragma_index_info(l.name) i
                 WHERE l.partial = 0 AND i.seqno = 0 AND i.name = $2",
            )
            .bind(&child)
            .bind(&col)
            .fetch_one(store.pool())
            .await
            .expect("indexes")
            .try_get("n")
            .expect("n");
            assert!(leads > 0, "{child}.{col} names {parent} and leads no index");
        }
    }
}
