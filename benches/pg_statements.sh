#!/usr/bin/env bash
# Where PostgreSQL's statement time goes in the channels bench:
#   benches/pg_statements.sh [bench executable]
#
# Starts a throwaway PostgreSQL cluster of the machine's version on port 5433 (data in
# /var/tmp/switchboard-pgstat, autovacuum off like this machine's service) with
# pg_stat_statements and track_planning, runs one Telegram round of `benches/channels.rs`
# against it (SWITCHBOARD_BENCH_POSTGRES_URL), and prints per statement (top level, and nested:
# the foreign keys' referential checks run inside an insert): calls, time executing
# and planning, rows. The gateway's own service on 5432 is not touched. Without an argument the
# bench is built first (`cargo bench --bench channels --no-run`). Used for the PostgreSQL
# tables of docs/BENCHMARKS.md; run as root or as a user that may `su postgres`.
set -euo pipefail

port=5433
home=/var/tmp/switchboard-pgstat
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
psql=(psql -h 127.0.0.1 -p "$port" -U postgres -X -q)
as_postgres() { if [ "$(id -un)" = postgres ]; then "$@"; else su postgres -c "$(printf '%q ' "$@")"; fi; }

if [ ! -f "$home/data/PG_VERSION" ]; then
  mkdir -p "$home" && chown postgres "$home"
  as_postgres "$bin/initdb" -D "$home/data" -A trust -U postgres >/dev/null
  cat >>"$home/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$home'
autovacuum = off
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track_planning = on
pg_stat_statements.max = 5000
CONF
fi
# Statements run inside others (the referential checks of foreign keys) are counted too, apart
# from the top-level ones (`toplevel`); a cluster made before this line gets it here.
grep -q '^pg_stat_statements.track = all' "$home/data/postgresql.conf" \
  || echo 'pg_stat_statements.track = all' >>"$home/data/postgresql.conf"
if ! "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
  as_postgres "$bin/pg_ctl" -D "$home/data" -l "$home/log" -w start >/dev/null
fi
"${psql[@]}" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"

exe=${1:-}
if [ -z "$exe" ]; then
  exe=$(cargo bench --bench channels --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "channels" and m.get("executable"):
        print(m["executable"])')
fi

"${psql[@]}" -c "SELECT pg_stat_statements_reset()" >/dev/null
SWITCHBOARD_BENCH_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres" \
BENCH_PROVIDERS=telegram BENCH_ROUNDS=1 BENCH_SOAK=0 BENCH_SECONDS="${BENCH_SECONDS:-5}" \
BENCH_WARMUP="${BENCH_WARMUP:-2}" "$exe" 2>&1 | grep -E "^(provider|telegram)|server's CPU"

# The bench's databases are dropped at its end; their statements stay (all but `postgres`'s own).
"${psql[@]}" -P pager=off <<'SQL'
\echo 'all statements of the run (top level: what the gateway sent; nested: run inside those, their time counted in both)'
SELECT CASE WHEN toplevel THEN 'top level' ELSE 'nested' END AS level,
       sum(calls) AS calls, round(sum(total_exec_time)::numeric) AS exec_ms,
       round(sum(total_plan_time)::numeric) AS plan_ms
FROM pg_stat_statements
WHERE dbid <> (SELECT oid FROM pg_database WHERE datname = 'postgres')
GROUP BY toplevel ORDER BY toplevel DESC;
\echo 'by statement'
SELECT CASE WHEN toplevel THEN '' ELSE 'nested' END AS level, calls, round(total_exec_time::numeric) AS exec_ms, round(total_plan_time::numeric) AS plan_ms,
       plans, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS statement
FROM pg_stat_statements
WHERE dbid <> (SELECT oid FROM pg_database WHERE datname = 'postgres')
ORDER BY total_exec_time + total_plan_time DESC
LIMIT 20;
SQL
