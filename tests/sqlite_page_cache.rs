//! SQLite's page cache under the gateway's wrapper (`store::sqlite_alloc::PageCache`), in a
//! process of its own: the wrapper is a process-wide setting SQLite takes only before its first
//! connection, as the gateway's `main` installs it.
//!
//! A growing database whose B-trees split and rebalance (the rebalance parks a page at the
//! locking page's number, which is what the wrapper must not mistake for a page past the end):
//! the wrapper must skip the commits' empty truncations, and every row must still be there,
//! the file intact — in the writer that inserted them, after deletes and a rolled-back
//! transaction that grew the file, and in a fresh connection that reads the file again.

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row};
use switchboard::store::sqlite_alloc::{PageCache, configure};

#[tokio::test]
async fn the_wrapped_page_cache_skips_empty_truncations_and_loses_nothing() {
    let configured = configure();
    assert!(
        configured.page_cache,
        "the wrapper must be installed before any connection: {configured:?}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("cache.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let mut writer = options.connect().await.expect("open");
    sqlx::query("PRAGMA cache_size = -32768")
        .execute(&mut writer)
        .await
        .expect("cache size");
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, body TEXT NOT NULL)")
        .execute(&mut writer)
        .await
        .expect("table");
    sqlx::query("CREATE INDEX t_k ON t (k)")
        .execute(&mut writer)
        .await
        .expect("index");

    let before = PageCache::skipped();
    // Keys out of order (a multiplicative scramble), so index pages split in the middle and
    // rebalance with their neighbours, as the message table's conversation index does.
    let rows = 20_000u64;
    for batch in 0..(rows / 500) {
        let mut tx = writer.begin().await.expect("begin");
        for i in batch * 500..(batch + 1) * 500 {
            let k = format!("{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            sqlx::query("INSERT INTO t (id, k, body) VALUES (?, ?, ?)")
                .bind(i as i64)
                .bind(&k)
                .bind("x".repeat(100 + (i % 300) as usize))
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
        tx.commit().await.expect("commit");
    }
    let skipped = PageCache::skipped() - before;
    assert!(
        skipped >= rows / 500 / 2,
        "most commits of a growing file have nothing past its end to drop: {skipped} skipped"
    );

    // A transaction that grows the file and is rolled back: its pages past the end must go.
    let mut tx = writer.begin().await.expect("begin");
    for i in rows..rows + 2_000 {
        sqlx::query("INSERT INTO t (id, k, body) VALUES (?, ?, ?)")
            .bind(i as i64)
            .bind(format!("z{i:015}"))
            .bind("y".repeat(400))
            .execute(&mut *tx)
            .await
            .expect("insert");
    }
    tx.rollback().await.expect("rollback");
    // Deletes free pages; the next inserts take them again.
    sqlx::query("DELETE FROM t WHERE id % 3 = 0")
        .execute(&mut writer)
        .await
        .expect("delete");
    for i in rows..rows + 1_000 {
        sqlx::query("INSERT INTO t (id, k, body) VALUES (?, ?, ?)")
            .bind(i as i64)
            .bind(format!("w{i:015}"))
            .bind("w".repeat(200))
            .execute(&mut writer)
            .await
            .expect("insert");
    }

    let expect = (rows - rows.div_ceil(3) + 1_000) as i64;
    for connection in [&mut writer, &mut options.connect().await.expect("reopen")] {
        let check: String = sqlx::query("PRAGMA integrity_check")
            .fetch_one(&mut *connection)
            .await
            .expect("integrity check")
            .get(0);
        assert_eq!(check, "ok");
        let (count, by_index): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM t INDEXED BY t_k WHERE k > '')",
        )
        .fetch_one(&mut *connection)
        .await
        .expect("count");
        assert_eq!((count, by_index), (expect, expect));
        let rolled_back: i64 = sqlx::query("SELECT count(*) FROM t WHERE k LIKE 'z%'")
            .fetch_one(&mut *connection)
            .await
            .expect("count")
            .get(0);
        assert_eq!(rolled_back, 0);
    }
}
