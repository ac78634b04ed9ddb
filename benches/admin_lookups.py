#!/usr/bin/env python3
"""What the lookups migration 0015 indexes cost as the tables grow (SQLite and PostgreSQL).

    python3 benches/admin_lookups.py [rows ...]        (default: 10000 100000 1000000)

For each size: a database with the gateway's migrations up to 0014 and one tenant with `rows`
contacts, each with a conversation (the bot's, as nearly all are) and a delivered reply, and
`rows` enrolments spread over 100 programs. Then, timed (the median of 9 runs):

- the hand-off timeout's sweep of the tenant (`store::moderation::RESUME_STALE_HANDOFFS`, run for
  every tenant every minute), which finds nothing to hand back;
- `GET /v1/deliveries?status=delivered` (100 rows: before, by status and time; after, the
  statement 0015 came with, `store::deliveries::DELIVERED_NEWEST`);
- `GET /v1/programs/{id}/stats` of one program (`store::programs`: its enrolments by status,
  where they stopped, how long they took; the engagement join);

then migration 0015 and the same again. SQLite through Python's sqlite3 module in a temporary
file; PostgreSQL through `psql` on 127.0.0.1:5432 (user postgres, trust auth) in a throwaway
database, skipped if it does not answer. The statements are copied from `src/store`.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

from status_reports import migrations, psql, sqlite_placeholders

RUNS = 9

SWEEP = """UPDATE conversation SET status = 'bot', assignee = NULL, handed_off_at = NULL,
            updated_at = $1
     WHERE tenant_id = $2 AND status = 'human' AND handed_off_at IS NOT NULL
       AND COALESCE((SELECT MAX(m.created_at) FROM message m
                     WHERE m.conversation_id = conversation.id AND m.author = 'agent'),
                    handed_off_at) < $3
     RETURNING id"""
LISTING = """SELECT id, conversation_id, message_id, status, attempts, last_error, next_attempt_at,
            updated_at
     FROM delivery WHERE tenant_id = $1 AND status = $2
     ORDER BY updated_at DESC, id DESC LIMIT $3"""
# What the listing of delivered messages runs since 0015 (`DELIVERED_NEWEST`).
DELIVERED = """SELECT id, conversation_id, message_id, status, attempts, last_error, next_attempt_at,
            updated_at
     FROM delivery WHERE tenant_id = $1 AND status = 'delivered'
     ORDER BY id DESC LIMIT $2"""
STATS = [
    "SELECT status, COUNT(*) AS n FROM enrollment WHERE program_id = $1 GROUP BY status",
    """SELECT step, COUNT(*) AS n FROM enrollment
     WHERE program_id = $1 AND status = 'stopped' GROUP BY step""",
    """SELECT completed_at - started_at AS took FROM enrollment
     WHERE program_id = $1 AND status = 'completed' AND completed_at IS NOT NULL""",
    """SELECT f.kind, f.step, f.status, f.reason, COUNT(*) AS n, COUNT(f.answered_at) AS answered
     FROM fire f JOIN enrollment e ON e.id = f.enrollment_id
     WHERE e.program_id = $1 AND f.kind IN ('checkin', 'nudge')
       AND ((f.status = 'done' AND f.sent = 1) OR (f.status = 'skipped' AND f.reason = 'holdout'))
     GROUP BY f.kind, f.step, f.status, f.reason""",
]
# (name, [(statement, args)]): what one timed run executes, before 0015 and after.
WORK = [
    ("hand-off sweep", [(SWEEP, (1, "t", 0))]),
    ("deliveries listing", [(LISTING, ("t", "delivered", 100))]),
    ("program stats", [(sql, ("g7",)) for sql in STATS]),
]
WORK_AFTER = [
    WORK[0],
    ("deliveries listing", [(DELIVERED, ("t", 100))]),
    WORK[2],
]


def fill_sql(rows):
    """One tenant and channel; per n: a contact, its conversation, an answered reply and its
    delivery, an enrolment in program n % 100 (completed, stopped or active) with one fire."""
    return f"""
    INSERT INTO tenant (id, slug, name, created_at) VALUES ('t', 't', 't', 0);
    INSERT INTO channel (id, tenant_id, kind, created_at, updated_at)
        VALUES ('ch', 't', 'telegram', 0, 0);
    INSERT INTO program (id, tenant_id, name, definition, current_version, created_at, updated_at)
        SELECT 'g' || n, 't', 'p' || n, '{{}}', 1, 0, 0 FROM {{programs}};
    INSERT INTO contact (id, tenant_id, created_at) SELECT 'p' || n, 't', 0 FROM {{series}};
    INSERT INTO conversation (id, tenant_id, contact_id, channel_id, created_at, updated_at)
        SELECT 'c' || n, 't', 'p' || n, 'ch', n, n FROM {{series}};
    INSERT INTO message (id, tenant_id, conversation_id, channel_id, seq, direction, author,
                         text, status, created_at)
        SELECT 'm' || n, 't', 'c' || n, 'ch', 1, 'outbound', 'bot', 'a reply', 'sent', n
        FROM {{series}};
    INSERT INTO delivery (id, tenant_id, channel_id, conversation_id, message_id, seq,
                          recipient, body, status, next_attempt_at, created_at, updated_at)
        SELECT 'd' || n, 't', 'ch', 'c' || n, 'm' || n, 1, '42', '{{}}', 'delivered', n, n, n
        FROM {{series}};
    INSERT INTO enrollment (id, tenant_id, program_id, version, contact_id, channel_id, status,
                            step, started_at, updated_at, completed_at)
        SELECT 'e' || n, 't', 'g' || (n % 100), 1, 'p' || n, 'ch',
               CASE n % 3 WHEN 0 THEN 'completed' WHEN 1 THEN 'stopped' ELSE 'active' END,
               's' || (n % 5), 0, n, CASE WHEN n % 3 = 0 THEN n END
        FROM {{series}};
    INSERT INTO fire (id, tenant_id, enrollment_id, contact_id, kind, step, version, epoch,
                      intended_at, due_at, status, sent, created_at, done_at)
        SELECT 'f' || n, 't', 'e' || n, 'p' || n, 'nudge', 'nudge-0', 1, 0, n, n, 'done', 1, n, n
        FROM {{series}};
    """


def timed(run, work):
    """Median ms of RUNS runs of each `work` item."""
    result = []
    for name, statements in work:
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            for sql, args in statements:
                run(sql, args)
            times.append((time.perf_counter() - start) * 1000)
        result.append((name, statistics.median(times)))
    return result


def sqlite(rows):
    import sqlite3

    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(os.path.join(d, "admin.db"), isolation_level=None)
        for f in migrations("sqlite", 14):
            db.executescript(open(f).read())

        def series(n):
            return (
                f"(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {n}) "
                "SELECT n FROM s)"
            )

        fill = fill_sql(rows).replace("{series}", series(rows))
        fill = fill.replace("{programs}", "(SELECT n - 1 AS n FROM " + series(100) + ")")
        db.executescript("BEGIN;" + fill + "COMMIT;")
        db.execute("ANALYZE")

        def run(sql, args):
            db.execute(sqlite_placeholders(sql), args).fetchall()

        before = timed(run, WORK)
        for f in migrations("sqlite", 15)[-1:]:
            db.executescript(open(f).read())
        db.execute("ANALYZE")
        after = timed(run, WORK_AFTER)
        return before, after


def literal(value):
    return str(value) if isinstance(value, int) else "'" + value + "'"


def postgres(rows):
    name = f"sb_admin_bench_{os.getpid()}"
    try:
        psql("postgres", f"CREATE DATABASE {name}")
    except (OSError, subprocess.CalledProcessError):
        return None
    try:
        for f in migrations("postgres", 14):
            psql(name, open(f).read())
        fill = fill_sql(rows).replace("{series}", f"generate_series(1, {rows}) AS n")
        fill = fill.replace("{programs}", "generate_series(0, 99) AS n")
        psql(name, fill + "ANALYZE;")

        def measure(work):
            # One session, the server's own clock (psql's start-up is not counted); each run's
            # statements by text with their arguments inlined, as a fresh plan sees them.
            script = ["CREATE TEMP TABLE t (name text, ms float8);"]
            for item, statements in work:
                for _ in range(RUNS):
                    script.append("CREATE TEMP TABLE t0 AS SELECT clock_timestamp() AS at;")
                    for sql, args in statements:
                        for n, arg in reversed(list(enumerate(args, 1))):
                            sql = sql.replace(f"${n}", literal(arg))
                        script.append(f"{sql};")
                    script.append(
                        f"INSERT INTO t SELECT '{item}', "
                        "extract(epoch FROM clock_timestamp() - at) * 1000 FROM t0;"
                    )
                    script.append("DROP TABLE t0;")
            script.append(
                "SELECT name, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FROM t GROUP BY name;"
            )
            out = psql(name, "\n".join(script))
            medians = dict(
                line.rsplit("|", 1) for line in out.strip().splitlines() if line.count("|") == 1
                and line.split("|")[0] in dict(WORK)
            )
            return [(item, float(medians[item])) for item, _ in WORK]

        before = measure(WORK)
        for f in migrations("postgres", 15)[-1:]:
            psql(name, open(f).read())
        psql(name, "ANALYZE")
        after = measure(WORK_AFTER)
        return before, after
    finally:
        psql("postgres", f"DROP DATABASE IF EXISTS {name}")


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000, 1_000_000]
    print(f"{'backend':10} {'rows':>10} {'lookup':20} {'ms, before':>11} {'after 0015':>11}")
    for rows in sizes:
        for backend, bench in (("sqlite", sqlite), ("postgres", postgres)):
            result = bench(rows)
            if result is None:
                print(f"{backend:10} {rows:>10,}  (no server)")
                continue
            for (item, before), (_, after) in zip(*result):
                print(f"{backend:10} {rows:>10,} {item:20} {before:>11.3f} {after:>11.3f}")


if __name__ == "__main__":
    main()
