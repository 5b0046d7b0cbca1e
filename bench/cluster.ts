/**
 * Row 10: cluster mode on PostgreSQL. The event log's append rate and replay time against the
 * embedded SQLite store; runs per second through two instances against one (fake CLI, each run
 * waiting 1 s, 2 s in the full run, as on a model); one run followed live by 2,000 listeners
 * split over two instances.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PostgresRunStore } from '../src/store/postgres-store.js'
import { SqliteRunStore } from '../src/store/sqlite-store.js'
import type { RunStore } from '../src/store/store.js'
import { startPostgres } from '../test/fixtures/postgres.js'
import { API_KEY, headers, readSse, round, type Proc } from './lib.js'

export interface ClusterBench {
  quick: boolean
  /** A server on the fake model with these settings (the fake CLI when asked). */
  server: (extra: Record<string, string>, fakeCli: boolean) => Promise<Proc>
  /** The directory runs execute in. */
  runs: string
  log: (s: string) => void
}

/** Append `n` events of one run and flush; then replay them a page at a time. */
async function logSpeed (store: RunStore, n: number): Promise<{ perSecond: number, replayMs: number }> {
  const runId = `bench-${n}-${Date.now()}`
  const data = JSON.stringify({ type: 'assistant', text: 'x'.repeat(80) })
  let t0 = performance.now()
  for (let i = 1; i <= n; i++) {
    store.appendEvent(runId, i, 'message', data)
    if (i % 500 === 0) await store.flush()
  }
  await store.flush()
  const perSecond = n / ((performance.now() - t0) / 1000)
  t0 = performance.now()
  let after = 0
  for (;;) {
    const page = await store.eventsAfter(runId, after, 500, 1024 * 1024)
    if (page.length === 0) break
    after = page.at(-1)!.seq
  }
  return { perSecond, replayMs: performance.now() - t0 }
}

async function submitAll (nodes: Proc[], n: number, prompt: (i: number) => string): Promise<number> {
  const t0 = performance.now()
  const ids = await Promise.all(Array.from({ length: n }, async (_, i) => {
    const res = await fetch(`${nodes[i % nodes.length]!.url}/api/runs`, { method: 'POST', headers, body: JSON.stringify({ prompt: prompt(i) }) })
    return (await res.json() as { id: string }).id
  }))
  for (const id of ids) {
    for (;;) {
      const run = await (await fetch(`${nodes[0]!.url}/api/runs/${id}`, { headers: { 'x-api-key': API_KEY } })).json() as { result: unknown }
      if (run.result !== null) break
      await new Promise(resolve => setTimeout(resolve, 50))
    }
  }
  return (performance.now() - t0) / 1000
}

export async function clusterRow (b: ClusterBench): Promise<Record<string, unknown>> {
  const cleanups: Array<() => unknown> = []
  try {
    const pg = await startPostgres({ teardown: fn => { cleanups.push(fn) } })

    // The event log, both stores.
    const events = b.quick ? 10_000 : 40_000
    const dir = mkdtempSync(join(tmpdir(), 'ccapi-bench-sqlite-'))
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
    const sqlite = new SqliteRunStore({ dataDir: dir })
    const onSqlite = await logSpeed(sqlite, events)
    await sqlite.close()
    const pgStore = await PostgresRunStore.open({ url: await pg.database(), origin: 'bench' })
    const onPg = await logSpeed(pgStore, events)
    await pgStore.close()
    b.log(`row 10: event log ${round(onPg.perSecond, 0)} events/s (SQLite ${round(onSqlite.perSecond, 0)})`)

    // Throughput: one instance, then two, on one database each time.
    const runs = b.quick ? 8 : 40
    // As long as a short model turn: what a slot holds is the wait, not the spawn (this machine's
    // CPUs are shared by both instances, unlike instances on separate machines).
    const runMs = b.quick ? 1000 : 2000
    const slots = '2'
    const throughput = async (instances: number): Promise<number> => {
      const url = await pg.database()
      const nodes = await Promise.all(Array.from({ length: instances }, async () => await b.server({ DATABASE_URL: url, MAX_CONCURRENT_RUNS: slots, MAX_QUEUED_RUNS: '1000' }, true)))
      try {
        const seconds = await submitAll(nodes, runs, i => `record ${join(b.runs, 'throughput.log')} ${runMs} run-${i}`)
        return runs / seconds
      } finally {
        await Promise.all(nodes.map(async n => await n.stop()))
      }
    }
    const one = await throughput(1)
    const two = await throughput(2)
    b.log(`row 10: ${round(two, 2)} runs/s on two instances, ${round(one, 2)} on one`)

    // Fan-out: one run, 2,000 listeners, half on each instance.
    const listeners = b.quick ? 400 : 2000
    const url = await pg.database()
    const nodes = await Promise.all([0, 1].map(async () => await b.server({ DATABASE_URL: url, MAX_CONCURRENT_RUNS: '1', MAX_CONNECTIONS: '5000' }, true)))
    let fanOut: { all: boolean, events: number, lastMs: number }
    try {
      const res = await fetch(`${nodes[0]!.url}/api/runs`, { method: 'POST', headers, body: JSON.stringify({ prompt: 'ticks 60 20' }) })
      const id = (await res.json() as { id: string }).id
      const t0 = performance.now()
      const counts = await Promise.all(Array.from({ length: listeners }, async (_, i) => {
        const r = await fetch(`${nodes[i % 2]!.url}/api/runs/${id}/events`, { headers: { 'x-api-key': API_KEY } })
        let n = 0
        await readSse(r, () => { n++ })
        return n
      }))
      fanOut = { all: counts.every(c => c === counts[0]), events: counts[0] ?? 0, lastMs: performance.now() - t0 }
    } finally {
      await Promise.all(nodes.map(async n => await n.stop()))
    }
    b.log(`row 10: ${listeners} listeners over two instances, all got ${fanOut.events} events: ${String(fanOut.all)}`)
    return { onSqlite, onPg, events, one, two, runs, runMs, listeners, fanOut }
  } finally {
    for (const c of cleanups.reverse()) await c()
  }
}
