// pg-boss 10.4.2 baseline for the job-queue benchmark (Node >= 20; pg-boss 11+ needs Node >= 22).
//
// What it measures: with N jobs scheduled far in the future already in the queue table, how fast
// W worker processes drain M jobs that are due now. Per round:
//   jobs_per_s = M / (max(completed_on) - min(started_on)) over the round's jobs (pg-boss's own columns),
//   wall_s     = time from forking the workers to the coordinator seeing all M jobs completed
//                (includes Node start-up, boss.start() and the coordinator's 250 ms poll granularity).
//
// pg-boss behaviours that matter (read from node_modules/pg-boss/src, v10.4.2):
// - Queues must exist (createQueue) before insert/work; each queue is its own partition of pgboss.job.
// - work() runs one polling loop per call: fetch up to batchSize jobs (SELECT ... FOR UPDATE SKIP LOCKED
//   ordered by priority, created_on), await the handler (it gets an ARRAY of jobs), then complete them.
//   Completion is fired without being awaited.
// - After each fetch the loop sleeps (pollingInterval - loop duration) when that's more than 100 ms,
//   EVEN IF THE BATCH WAS FULL. So it doesn't fetch again right away, and a worker handles at most
//   about batchSize jobs per pollingInterval.
// - The minimum pollingIntervalSeconds is 0.5 (POLICY.MIN_POLLING_INTERVAL_MS = 500), so the ceiling is
//   about W * B / 0.5 s (W=1, B=64: ~128 jobs/s) while the handler does nothing.
// - insert(jobs[]) is the documented bulk API: one INSERT ... SELECT FROM json_to_recordset per call.
//   It returns no ids in v10, so we choose the ids ourselves.
//
// Usage: node bench.mjs --url <postgres url of an EMPTY database (or, with --scheduled 0, one it filled)> [--scheduled 1000000] [--due 20000]
//          [--workers 1] [--batch 64] [--rounds 1]
// Results go to stdout as one JSON line per round; progress and errors go to stderr.

import { fork } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { createRequire } from 'node:module'
import { parseArgs } from 'node:util'
import PgBoss from 'pg-boss'

const VERSION = createRequire(import.meta.url)('pg-boss/package.json').version
const QUEUE = 'bench'
const MIN_POLL_S = 0.5 // pg-boss 10: pollingIntervalSeconds must be >= 0.5
const INSERT_CHUNK = 5000
const STALL_MS = 120_000 // fail if a round makes no progress for this long

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    scheduled: { type: 'string', default: '1000000' },
    due: { type: 'string', default: '20000' },
    workers: { type: 'string', default: '1' },
    batch: { type: 'string', default: '64' },
    rounds: { type: 'string', default: '1' },
    worker: { type: 'boolean', default: false }
  }
})
const int = (name, min) => {
  const v = Number(opt[name])
  if (!Number.isInteger(v) || v < min) throw new Error(`--${name} must be an integer >= ${min}`)
  return v
}
const log = (...a) => console.error(`[pgboss ${process.pid}]`, ...a)
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

if (!opt.url) {
  console.error('usage: node bench.mjs --url <postgres url> [--scheduled N] [--due M] [--workers W] [--batch B] [--rounds R]')
  process.exit(2)
}

if (opt.worker) await runWorker()
else await runCoordinator()

// ---------------------------------------------------------------- worker process
async function runWorker () {
  const batchSize = int('batch', 1)
  // Pure consumer: the coordinator already migrated the schema and runs maintenance.
  const boss = new PgBoss({ connectionString: opt.url, migrate: false, supervise: false, schedule: false })
  boss.on('error', err => { log('worker error:', err.message); process.exit(1) })
  process.on('disconnect', () => process.exit(1)) // coordinator died
  process.on('message', async msg => {
    if (msg !== 'stop') return
    await boss.stop({ graceful: true, wait: true })
    process.exit(0)
  })
  await boss.start()
  await boss.work(QUEUE, { batchSize, pollingIntervalSeconds: MIN_POLL_S }, async jobs => {}) // no-op handler
  process.send('ready')
}

// ---------------------------------------------------------------- coordinator
async function runCoordinator () {
  const scheduled = int('scheduled', 0)
  const due = int('due', 1)
  const workers = int('workers', 1)
  const batch = int('batch', 1)
  const rounds = int('rounds', 1)

  const children = new Set()
  const killChildren = () => { for (const c of children) c.kill('SIGKILL') }
  process.on('SIGINT', () => { killChildren(); process.exit(130) })
  process.on('SIGTERM', () => { killChildren(); process.exit(143) })

  const boss = new PgBoss({ connectionString: opt.url })
  let bossError = null
  boss.on('error', err => { bossError = err; log('pg-boss error:', err.message) })
  const db = boss.getDb()

  try {
    await boss.start()
    // A later call on the same database (--scheduled 0) adds rounds to the queue it made.
    if (await boss.getQueue(QUEUE)) {
      if (scheduled > 0) throw new Error(`queue "${QUEUE}" already exists: give me an empty database, or --scheduled 0`)
    } else {
      await boss.createQueue(QUEUE)
    }

    // Fill: jobs due between 1 day and 366 days from now, spread evenly.
    const t0 = Date.now()
    const day = 86_400_000
    for (let i = 0; i < scheduled; i += INSERT_CHUNK) {
      const jobs = []
      for (let j = i; j < Math.min(i + INSERT_CHUNK, scheduled); j++) {
        jobs.push({ name: QUEUE, data: { future: j }, startAfter: new Date(t0 + day + Math.floor(j * (365 * day) / scheduled)) })
      }
      await boss.insert(jobs)
      const done = i + jobs.length
      if (done % 100_000 < INSERT_CHUNK || done === scheduled) {
        const s = (Date.now() - t0) / 1000
        log(`fill ${done}/${scheduled} in ${s.toFixed(1)} s (${Math.round(done / s)} jobs/s)`)
      }
    }

    for (let round = 1; round <= rounds; round++) {
      // Due jobs, tagged with the round; we choose their ids so we can watch exactly them.
      const ids = []
      for (let i = 0; i < due; i += INSERT_CHUNK) {
        const jobs = []
        for (let j = i; j < Math.min(i + INSERT_CHUNK, due); j++) {
          const id = randomUUID()
          ids.push(id)
          jobs.push({ id, name: QUEUE, data: { round, j } })
        }
        await boss.insert(jobs)
      }
      log(`round ${round}: inserted ${due} due jobs; forking ${workers} worker(s)`)

      // Fork the workers (same script, --worker) and wait until each is polling.
      const wall0 = process.hrtime.bigint()
      let childFailure = null
      const ready = []
      for (let w = 0; w < workers; w++) {
        const child = fork(process.argv[1], ['--worker', '--url', opt.url, '--batch', String(batch)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
        children.add(child)
        ready.push(new Promise(resolve => { child.once('message', resolve); child.once('exit', resolve) }))
        child.on('exit', (code, signal) => {
          children.delete(child)
          if (!child.stopping) childFailure ??= new Error(`worker ${child.pid} exited early (code ${code}, signal ${signal})`)
        })
      }

      // Wait until pg-boss has marked every job of the round completed (read-only SELECT).
      let last = -1
      let lastChange = Date.now()
      for (;;) {
        await sleep(250)
        if (childFailure) throw childFailure
        if (bossError) throw bossError
        const { rows: [r] } = await db.executeSql(
          `SELECT count(*) FILTER (WHERE state = 'completed')::int AS completed,
                  count(*) FILTER (WHERE state > 'completed')::int AS failed
             FROM pgboss.job WHERE name = $1 AND id = ANY($2::uuid[])`, [QUEUE, ids])
        if (r.failed > 0) throw new Error(`round ${round}: ${r.failed} jobs ended failed/cancelled`)
        if (r.completed === due) break
        if (r.completed !== last) {
          if (Math.floor(r.completed / 5000) !== Math.floor(last / 5000)) log(`round ${round}: ${r.completed}/${due} completed`)
          last = r.completed
          lastChange = Date.now()
        } else if (Date.now() - lastChange > STALL_MS) {
          throw new Error(`round ${round}: stalled at ${r.completed}/${due} completed`)
        }
      }
      const wall = Number(process.hrtime.bigint() - wall0) / 1e9
      await Promise.all(ready)
      if (childFailure) throw childFailure

      // Stop the workers.
      const exits = [...children].map(c => new Promise(resolve => { c.stopping = true; c.once('exit', resolve); c.send('stop') }))
      await Promise.all(exits)

      const { rows: [m] } = await db.executeSql(
        `SELECT extract(epoch FROM max(completed_on) - min(started_on))::float8 AS elapsed
           FROM pgboss.job WHERE name = $1 AND id = ANY($2::uuid[])`, [QUEUE, ids])
      console.log(JSON.stringify({
        peer: 'pg-boss',
        version: VERSION,
        round,
        due,
        scheduled,
        workers,
        batch,
        jobs_per_s: Math.round(due / m.elapsed * 10) / 10,
        elapsed_s: Math.round(m.elapsed * 1000) / 1000,
        wall_s: Math.round(wall * 1000) / 1000
      }))
    }

    await boss.stop({ graceful: true, wait: true })
    process.exit(0)
  } catch (err) {
    log('FAILED:', err.stack || err.message)
    killChildren()
    await boss.stop({ graceful: false, wait: true }).catch(() => {})
    process.exit(1)
  }
}
