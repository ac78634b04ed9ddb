#!/usr/bin/env python3
"""What one provider status report costs as the history grows (SQLite and PostgreSQL).

    python3 benches/status_reports.py [rows ...]        (default: 10000 100000 1000000)

For each size: a database with the gateway's migrations up to 0012, `rows` deliveries of one
channel that the provider accepted (each with its provider id, as after a send), then the
statements a status report runs (`store::deliveries`: is the id ours, the message's status, the
week-old held reports dropped) timed over 200 reports of random ids (20 above 100,000 rows);
then migration 0013 (`delivery_by_provider_message`, `early_status_by_age`) and the same again.
SQLite through Python's sqlite3 module in a temporary file; PostgreSQL through `psql` on
127.0.0.1:5432 (user postgres, trust auth) in a throwaway database, skipped if it does not answer.
The statements are copied from `src/store/deliveries.rs` with `?` for SQLite's placeholders.
"""

import glob
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reports(rows):
    """How many reports are timed: fewer where each reads a million rows."""
    return 200 if rows <= 100_000 else 20

KNOWN = "SELECT 1 AS one FROM delivery WHERE channel_id = $1 AND provider_message_id = $2"
TO_MESSAGE = """UPDATE message SET status = $1
     WHERE id IN (SELECT message_id FROM delivery
                  WHERE channel_id = $2 AND provider_message_id = $3)
       AND (CASE status WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3
                        WHEN 'played' THEN 3 WHEN 'failed' THEN 4 ELSE 0 END) < $4"""
EXPIRE = "DELETE FROM early_status WHERE created_at < $1"


def migrations(backend, upto):
    files = sorted(glob.glob(os.path.join(ROOT, "migrations", backend, "*.sql")))
    return [f for f in files if int(os.path.basename(f)[:4]) <= upto]


def sqlite_placeholders(sql):
    for n in range(9, 0, -1):
        sql = sql.replace(f"${n}", f"?{n}")
    return sql


def fill_sql(rows):
    """One tenant, channel, contact, conversation; `rows` replies with their deliveries."""
    return f"""
    INSERT INTO tenant (id, slug, name, created_at) VALUES ('t', 't', 't', 0);
    INSERT INTO channel (id, tenant_id, kind, created_at, updated_at)
        VALUES ('ch', 't', 'whatsapp', 0, 0);
    INSERT INTO contact (id, tenant_id, created_at) VALUES ('p', 't', 0);
    INSERT INTO conversation (id, tenant_id, contact_id, channel_id, created_at, updated_at)
        VALUES ('c', 't', 'p', 'ch', 0, 0);
    INSERT INTO message (id, tenant_id, conversation_id, channel_id, seq, direction, author,
                         text, status, created_at)
        SELECT 'm' || n, 't', 'c', 'ch', n, 'outbound', 'bot', 'a reply', 'sent', 0
        FROM {{series}};
    INSERT INTO delivery (id, tenant_id, channel_id, conversation_id, message_id, seq,
                          recipient, body, status, next_attempt_at, provider_message_id,
                          created_at, updated_at)
        SELECT 'd' || n, 't', 'ch', 'c', 'm' || n, n, '15550001', '{{}}', 'delivered', 0,
               'wamid.' || n, 0, 0
        FROM {{series}};
    """


def time_reports(run, rows):
    rng = random.Random(rows)
    ids = [f"wamid.{rng.randint(1, rows)}" for _ in range(reports(rows))]
    start = time.perf_counter()
    for i in ids:
        run(KNOWN, ("ch", i))
        run(TO_MESSAGE, ("read", "ch", i, 3))
        run(EXPIRE, (0,))
    return (time.perf_counter() - start) / len(ids) * 1000


def sqlite(rows):
    import sqlite3

    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(os.path.join(d, "status.db"), isolation_level=None)
        for f in migrations("sqlite", 12):
            db.executescript(open(f).read())
        series = (
            f"(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {rows}) "
            "SELECT n FROM s)"
        )
        db.executescript("BEGIN;" + fill_sql(rows).replace("{series}", series) + "COMMIT;")
        db.execute("ANALYZE")

        def run(sql, args):
            db.execute(sqlite_placeholders(sql), args).fetchall()

        before = time_reports(run, rows)
        for f in migrations("sqlite", 13)[-1:]:
            db.executescript(open(f).read())
        after = time_reports(run, rows)
        return before, after


def psql(db, sql, quiet=True):
    cmd = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-X", "-v", "ON_ERROR_STOP=1"]
    if quiet:
        cmd.append("-q")
    return subprocess.run(cmd + ["-Atc", sql], check=True, capture_output=True, text=True).stdout


def postgres(rows):
    name = f"sb_status_bench_{os.getpid()}"
    try:
        psql("postgres", f"CREATE DATABASE {name}")
    except (OSError, subprocess.CalledProcessError):
        return None
    try:
        for f in migrations("postgres", 12):
            psql(name, open(f).read())
        series = f"generate_series(1, {rows}) AS n"
        psql(name, fill_sql(rows).replace("{series}", series) + "ANALYZE;")

        def timed():
            rng = random.Random(rows)
            ids = [f"wamid.{rng.randint(1, rows)}" for _ in range(reports(rows))]
            # One session for all reports, the statements prepared as the gateway's are; the
            # server's own clock (clock_timestamp) so that psql's start-up is not counted.
            script = [
                f"PREPARE known(text, text) AS {KNOWN};",
                f"PREPARE to_message(text, text, text, bigint) AS {TO_MESSAGE};",
                f"PREPARE expire(bigint) AS {EXPIRE};",
                "CREATE TEMP TABLE t0 AS SELECT clock_timestamp() AS at;",
            ]
            for i in ids:
                script += [
                    f"EXECUTE known('ch', '{i}');",
                    f"EXECUTE to_message('read', 'ch', '{i}', 3);",
                    "EXECUTE expire(0);",
                ]
            script.append(
                "SELECT extract(epoch FROM clock_timestamp() - at) * 1000 FROM t0;"
            )
            out = psql(name, "\n".join(script))
            return float(out.strip().splitlines()[-1]) / len(ids)

        before = timed()
        for f in migrations("postgres", 13)[-1:]:
            psql(name, open(f).read())
        psql(name, "ANALYZE")
        after = timed()
        return before, after
    finally:
        psql("postgres", f"DROP DATABASE IF EXISTS {name}")


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000, 1_000_000]
    print(f"{'backend':10} {'deliveries':>11} {'ms per report, before':>22} {'after 0013':>11}")
    for rows in sizes:
        for backend, bench in (("sqlite", sqlite), ("postgres", postgres)):
            result = bench(rows)
            if result is None:
                print(f"{backend:10} {rows:>11,}  (no server)")
                continue
            before, after = result
            print(f"{backend:10} {rows:>11,} {before:>22.3f} {after:>11.3f}")


if __name__ == "__main__":
    main()
