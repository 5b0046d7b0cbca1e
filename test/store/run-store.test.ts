import { test } from 'tap'
import Database from 'better-sqlite3'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { RunStore, type RunStoreOptions, type StoredEvent } from '../../src/store/run-store.js'
import { MIGRATIONS } from '../../src/store/migrations.js'
import type { RunSpec } from '../../src/runner/types.js'
import type { ExecuteResult, RunStatus } from '../../src/schemas/execute.js'

/** What the helpers need of a tap test. */
interface Tap { teardown: (fn: () => unknown) => void }

const SESSION = '11111111-2222-4333-8444-555555555555'
const OTHER_SESSION = '66666666-7777-4888-9999-aaaaaaaaaaaa'
const T0 = 1_700_000_000_000
const DAY = 86_400_000
const repoRoot = fileURLToPath(new URL('../../', import.meta.url))

/** A temp data dir removed when the test ends. */
function tempDir (t: Tap): string {
  const dir = mkdtempSync(join(tmpdir(), 'run-store-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/**
 * A store that flushes only when told (or at a batch size the test picks), closed at teardown.
 * Teardowns run in reverse order, so the store is closed before its directory is removed.
 */
function openStore (t: Tap, dataDir: string, opts: Partial<RunStoreOptions> = {}): RunStore {
  const store = new RunStore({ dataDir, flushIntervalMs: 60_000, flushMaxEvents: 1_000_000, ...opts })
  t.teardown(() => store.close())
  return store
}

/** A second, independent connection: sees only what the store committed to disk. */
function reader (t: Tap, dataDir: string): Database.Database {
  const db = new Database(join(dataDir, 'runs.db'), { readonly: true })
  t.teardown(() => db.close())
  return db
}

const countEvents = (db: Database.Database, runId?: string): number => runId === undefined
  ? (db.prepare('SELECT COUNT(*) AS n FROM events').get() as { n: number }).n
  : (db.prepare('SELECT COUNT(*) AS n FROM events WHERE run_id = ?').get(runId) as { n: number }).n

function spec (runId: string, over: Partial<RunSpec> = {}): RunSpec {
  return {
    runId,
    prompt: 'say hi',
    cwd: '/srv/work',
    sessionId: SESSION,
    sessionMode: 'new',
    timeoutS: 300,
    env: { SECRET_TOKEN: 'hunter2' },
    permissionMode: 'acceptEdits',
    includePartialMessages: false,
    ...over
  }
}

function result (runId: string, status: RunStatus, over: Partial<ExecuteResult> = {}): ExecuteResult {
  return {
    success: status === 'succeeded',
    output: status === 'succeeded' ? 'hi' : '',
    error: status === 'succeeded' ? null : 'the run failed',
    exit_code: status === 'succeeded' ? 0 : 1,
    execution_time: 2.34,
    timestamp: new Date(T0 + 2340).toISOString(),
    run_id: runId,
    session_id: SESSION,
    status,
    error_code: status === 'succeeded' ? null : 'cli_error',
    api_error_status: null,
    num_turns: 1,
    total_cost_usd: 0.0006,
    usage: { input_tokens: 20, output_tokens: 22 },
    duration_ms: 145,
    permission_denials: [],
    structured_output: null,
    truncated: false,
    ...over
  }
}

interface RunOpts { sessionId?: string, keyName?: string | null, createdAt?: number, status?: RunStatus }

/** Insert a run and move it to `status` the way the runner does. */
function addRun (store: RunStore, id: string, o: RunOpts = {}): void {
  const sessionId = o.sessionId ?? SESSION
  const createdAt = o.createdAt ?? T0
  store.insertRun({
    id,
    sessionId,
    workingDirectory: '/srv/work',
    request: { prompt: 'say hi' },
    spec: spec(id, { sessionId }),
    keyName: o.keyName === undefined ? 'alice' : o.keyName,
    cancelOnDisconnect: false,
    createdAt
  })
  const status = o.status ?? 'queued'
  if (status === 'queued') return
  store.markStarted(id, createdAt + 10, `marker-${id}`, sessionId)
  if (status === 'running') return
  store.markFinished(id, result(id, status, { session_id: sessionId }), createdAt + 2000)
}

const evt = (seq: number): StoredEvent => ({ seq, type: 'message', data: JSON.stringify({ n: seq }) })

function appendN (store: RunStore, runId: string, from: number, to: number): void {
  for (let seq = from; seq <= to; seq++) store.appendEvent(runId, seq, 'message', JSON.stringify({ n: seq }))
}

const seqs = (events: StoredEvent[]): number[] => events.map(e => e.seq)
const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i)

test('insertRun + getRun round-trip every field of a queued run', async t => {
  const store = openStore(t, tempDir(t))
  const request = { prompt: 'say hi', model: 'sonnet', env_vars: {}, allowed_tools: ['Bash(git *)'] }
  store.insertRun({
    id: 'run-1',
    sessionId: SESSION,
    workingDirectory: '/srv/work',
    request,
    spec: spec('run-1'),
    keyName: 'alice',
    cancelOnDisconnect: true,
    createdAt: T0
  })
  const run = store.getRun('run-1')
  t.ok(run)
  t.match(run, {
    id: 'run-1',
    status: 'queued',
    sessionId: SESSION,
    workingDirectory: '/srv/work',
    keyName: 'alice',
    cancelOnDisconnect: true,
    marker: null,
    createdAt: T0,
    startedAt: null,
    endedAt: null,
    result: null
  })
  t.type(run!.rowid, 'number')
  t.strictSame(run!.request, request)
  t.strictSame(run!.spec, spec('run-1'), 'the spec, env values included, is kept while queued')

  store.insertRun({
    id: 'run-2',
    sessionId: SESSION,
    workingDirectory: '/srv/work',
    request: { prompt: 'x' },
    spec: spec('run-2'),
    keyName: null,
    cancelOnDisconnect: false,
    createdAt: T0 + 1
  })
  const run2 = store.getRun('run-2')!
  t.equal(run2.keyName, null)
  t.equal(run2.cancelOnDisconnect, false)
  t.ok(run2.rowid > run!.rowid, 'rowid follows insertion order')

  t.equal(store.getRun('no-such-run'), undefined)
})

test('markStarted and markFinished move the run on and drop the spec with its secrets', async t => {
  const store = openStore(t, tempDir(t))
  addRun(store, 'run-1')
  store.markStarted('run-1', T0 + 50, 'marker-abc', OTHER_SESSION)
  const started = store.getRun('run-1')!
  t.equal(started.status, 'running')
  t.equal(started.startedAt, T0 + 50)
  t.equal(started.marker, 'marker-abc')
  t.equal(started.sessionId, OTHER_SESSION, 'the session id the run really writes to (fork) is recorded')
  t.equal(started.spec, null, 'env values do not stay on disk once the run started')
  t.equal(started.endedAt, null)
  t.equal(started.result, null)

  const res = result('run-1', 'timed_out', { error_code: 'timeout', usage: null })
  store.markFinished('run-1', res, T0 + 9000)
  const done = store.getRun('run-1')!
  t.equal(done.status, 'timed_out', 'status comes from the result')
  t.equal(done.endedAt, T0 + 9000)
  t.strictSame(done.result, res)
  t.equal(done.spec, null)
  t.equal(done.marker, 'marker-abc', 'the marker stays for leftover cleanup')
  t.equal(done.startedAt, T0 + 50)

  // A run cancelled while still queued is finished without ever starting.
  addRun(store, 'run-2')
  store.markFinished('run-2', result('run-2', 'cancelled'), T0 + 100)
  const cancelled = store.getRun('run-2')!
  t.equal(cancelled.status, 'cancelled')
  t.equal(cancelled.spec, null)
  t.equal(cancelled.startedAt, null)
})

test('appended events are readable at once, before any flush, and on disk after close + reopen', async t => {
  const dir = tempDir(t)
  const store = new RunStore({ dataDir: dir, flushIntervalMs: 60_000, flushMaxEvents: 1_000_000 })
  addRun(store, 'run-1', { status: 'running' })
  t.equal(store.lastSeq('run-1'), 0, 'no events yet')
  store.appendEvent('run-1', 1, 'run', '{"run_id":"run-1"}')
  store.appendEvent('run-1', 2, 'message', '{"type":"assistant"}')
  store.appendEvent('run-1', 3, 'text', '"hi"')

  const db = reader(t, dir)
  t.equal(countEvents(db), 0, 'nothing written yet: the events wait in the batch')
  t.strictSame(store.eventsAfter('run-1', 0, 100), [
    { seq: 1, type: 'run', data: '{"run_id":"run-1"}' },
    { seq: 2, type: 'message', data: '{"type":"assistant"}' },
    { seq: 3, type: 'text', data: '"hi"' }
  ])
  t.equal(store.lastSeq('run-1'), 3)
  t.equal(store.lastSeq('other-run'), 0)
  t.strictSame(store.eventsAfter('other-run', 0, 100), [])

  store.close()
  t.equal(countEvents(db), 3, 'close writes the waiting events')

  const reopened = openStore(t, dir)
  t.strictSame(seqs(reopened.eventsAfter('run-1', 0, 100)), [1, 2, 3])
  t.equal(reopened.eventsAfter('run-1', 2, 100)[0]!.data, '"hi"')
  t.equal(reopened.lastSeq('run-1'), 3)
})

test('eventsAfter honours after and limit across the stored/pending boundary', async t => {
  const dir = tempDir(t)
  const store = openStore(t, dir)
  addRun(store, 'run-a', { status: 'running' })
  addRun(store, 'run-b', { status: 'running' })
  // Interleave another run's events: they must never leak into run-a's reads.
  for (let seq = 1; seq <= 10; seq++) {
    store.appendEvent('run-a', seq, 'message', JSON.stringify({ n: seq }))
    store.appendEvent('run-b', seq, 'message', '{"other":true}')
  }
  store.flush()
  for (let seq = 11; seq <= 20; seq++) {
    store.appendEvent('run-b', seq, 'message', '{"other":true}')
    store.appendEvent('run-a', seq, 'message', JSON.stringify({ n: seq }))
  }
  t.equal(countEvents(reader(t, dir), 'run-a'), 10, 'setup: 1..10 stored, 11..20 pending')

  t.strictSame(store.eventsAfter('run-a', 0, 100), range(1, 20).map(evt), 'everything, in order')
  t.strictSame(seqs(store.eventsAfter('run-a', 5, 3)), [6, 7, 8], 'stored only')
  t.strictSame(seqs(store.eventsAfter('run-a', 8, 5)), [9, 10, 11, 12, 13], 'crossing the boundary')
  t.strictSame(seqs(store.eventsAfter('run-a', 10, 2)), [11, 12], 'pending only, right at the boundary')
  t.strictSame(seqs(store.eventsAfter('run-a', 12, 5)), [13, 14, 15, 16, 17], 'pending only')
  t.strictSame(seqs(store.eventsAfter('run-a', 18, 100)), [19, 20])
  t.strictSame(store.eventsAfter('run-a', 20, 5), [], 'nothing after the last')
  t.equal(store.lastSeq('run-a'), 20)

  for (const limit of [1, 3, 7, 10]) {
    const seen: number[] = []
    let after = 0
    for (;;) {
      const page = store.eventsAfter('run-a', after, limit)
      if (page.length === 0) break
      t.ok(page.length <= limit, `a page holds at most ${limit}`)
      seen.push(...seqs(page))
      after = page.at(-1)!.seq
    }
    t.strictSame(seen, range(1, 20), `paging by ${limit}: every event exactly once, no gaps`)
  }
})

test('event writes are batched: a full batch is written at flushMaxEvents, the rest waits for flush()', async t => {
  const dir = tempDir(t)
  const store = openStore(t, dir, { flushMaxEvents: 100 })
  addRun(store, 'run-1', { status: 'running' })
  const db = reader(t, dir)
  appendN(store, 'run-1', 1, 99)
  t.equal(countEvents(db), 0, '99 events: still waiting')
  appendN(store, 'run-1', 100, 250)
  t.equal(countEvents(db), 200, 'two full batches written, 50 waiting')
  t.equal(store.lastSeq('run-1'), 250, 'reads see the waiting ones too')
  t.equal(store.eventsAfter('run-1', 0, 1000).length, 250)
  store.flush()
  t.equal(countEvents(db), 250, 'flush() writes the rest')
  store.flush()
  t.equal(countEvents(db), 250, 'a second flush writes nothing twice')
  t.strictSame(seqs(store.eventsAfter('run-1', 0, 1000)), range(1, 250))
})

test('the flush timer writes waiting events on its own', async t => {
  const dir = tempDir(t)
  const store = openStore(t, dir, { flushIntervalMs: 10 })
  addRun(store, 'run-1', { status: 'running' })
  const db = reader(t, dir)
  appendN(store, 'run-1', 1, 5)
  t.equal(countEvents(db), 0)
  const deadline = Date.now() + 2000
  while (countEvents(db) < 5 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 10))
  t.equal(countEvents(db), 5, 'written within a few intervals without flush() or close()')
})

test('markFinished writes the run\'s waiting events first', async t => {
  const dir = tempDir(t)
  const store = openStore(t, dir)
  addRun(store, 'run-1', { status: 'running' })
  const db = reader(t, dir)
  appendN(store, 'run-1', 1, 4)
  t.equal(countEvents(db), 0)
  store.markFinished('run-1', result('run-1', 'succeeded'), T0 + 1000)
  t.equal(countEvents(db, 'run-1'), 4, 'the log is complete on disk when the run is marked finished')
})

test('flushed events survive a crash: a store that was never closed is read by a new one', async t => {
  const dir = tempDir(t)
  // Never closed before the second store opens: like a process killed with -9. Its timer is
  // unref'd, so it would not keep the process alive; teardown closes it only to free the handle.
  const crashed = openStore(t, dir)
  addRun(crashed, 'run-1', { status: 'running' })
  appendN(crashed, 'run-1', 1, 30)
  crashed.flush()

  const next = openStore(t, dir)
  t.equal(next.getRun('run-1')!.status, 'running')
  t.equal(next.getRun('run-1')!.marker, 'marker-run-1', 'the marker is there to clean up leftovers')
  t.strictSame(next.eventsAfter('run-1', 0, 100), range(1, 30).map(evt))
  t.equal(next.lastSeq('run-1'), 30)
})

test('a process killed with SIGKILL keeps its flushed events; only the unflushed batch is lost', async t => {
  const dir = tempDir(t)
  const storeUrl = new URL('../../src/store/run-store.ts', import.meta.url).href
  const code = `
    const { RunStore } = await import(${JSON.stringify(storeUrl)})
    const store = new RunStore({ dataDir: ${JSON.stringify(dir)}, flushIntervalMs: 60000, flushMaxEvents: 1000000 })
    store.insertRun({ id: 'run-1', sessionId: 's', workingDirectory: '/w', request: {}, spec: {}, keyName: null, cancelOnDisconnect: false, createdAt: 1 })
    store.markStarted('run-1', 2, 'm', 's')
    for (let seq = 1; seq <= 40; seq++) store.appendEvent('run-1', seq, 'message', '{}')
    store.flush()
    for (let seq = 41; seq <= 45; seq++) store.appendEvent('run-1', seq, 'message', '{}')
    process.kill(process.pid, 'SIGKILL')
  `
  const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: repoRoot, encoding: 'utf8', timeout: 30_000 })
  t.equal(child.signal, 'SIGKILL', `the child died by SIGKILL (stderr: ${child.stderr})`)

  const store = openStore(t, dir)
  t.equal(store.getRun('run-1')?.status, 'running')
  t.equal(store.lastSeq('run-1'), 40, 'every flushed event is there')
  t.strictSame(seqs(store.eventsAfter('run-1', 0, 100)), range(1, 40))
})

test('listRuns: newest first, filters, and before-cursor pagination', async t => {
  const store = openStore(t, tempDir(t))
  const runs: Array<[string, RunOpts]> = [
    ['r1', { status: 'succeeded', keyName: 'alice' }],
    ['r2', { status: 'failed', keyName: 'bob', sessionId: OTHER_SESSION }],
    ['r3', { status: 'running', keyName: 'alice' }],
    ['r4', { status: 'succeeded', keyName: null, sessionId: OTHER_SESSION }],
    ['r5', { status: 'queued', keyName: 'bob' }],
    ['r6', { status: 'succeeded', keyName: 'alice', sessionId: OTHER_SESSION }],
    ['r7', { status: 'cancelled', keyName: 'alice' }]
  ]
  // Equal createdAt on purpose: order must come from insertion, not from the clock.
  for (const [id, o] of runs) addRun(store, id, { createdAt: T0, ...o })
  const ids = (list: Array<{ id: string }>) => list.map(r => r.id)

  t.strictSame(ids(store.listRuns({ limit: 100 })), ['r7', 'r6', 'r5', 'r4', 'r3', 'r2', 'r1'])
  t.strictSame(ids(store.listRuns({ limit: 2 })), ['r7', 'r6'], 'limit')
  t.strictSame(ids(store.listRuns({ status: 'succeeded', limit: 100 })), ['r6', 'r4', 'r1'])
  t.strictSame(ids(store.listRuns({ sessionId: OTHER_SESSION, limit: 100 })), ['r6', 'r4', 'r2'])
  t.strictSame(ids(store.listRuns({ keyName: 'bob', limit: 100 })), ['r5', 'r2'])
  t.strictSame(ids(store.listRuns({ status: 'succeeded', keyName: 'alice', limit: 100 })), ['r6', 'r1'], 'filters combine')
  t.strictSame(ids(store.listRuns({ status: 'interrupted', limit: 100 })), [])
  t.strictSame(ids(store.listRuns({ sessionId: 'no-such-session', limit: 100 })), [])

  for (const limit of [1, 2, 3, 7, 10]) {
    const seen: string[] = []
    let before: number | undefined
    for (;;) {
      const page = store.listRuns({ limit, ...(before === undefined ? {} : { before }) })
      if (page.length === 0) break
      t.ok(page.length <= limit)
      seen.push(...ids(page))
      before = page.at(-1)!.rowid
    }
    t.strictSame(seen, ['r7', 'r6', 'r5', 'r4', 'r3', 'r2', 'r1'], `pages of ${limit}: every run exactly once, newest first`)
  }

  const seen: string[] = []
  let before: number | undefined
  for (;;) {
    const page = store.listRuns({ keyName: 'alice', limit: 2, ...(before === undefined ? {} : { before }) })
    if (page.length === 0) break
    seen.push(...ids(page))
    before = page.at(-1)!.rowid
  }
  t.strictSame(seen, ['r7', 'r6', 'r3', 'r1'], 'pagination with a filter')
})

test('runsWithStatus returns runs in insertion order', async t => {
  const store = openStore(t, tempDir(t))
  // Created-at in reverse so a sort on the clock would give the wrong order.
  addRun(store, 'q1', { createdAt: T0 + 3 })
  addRun(store, 'x1', { createdAt: T0 + 2, status: 'running' })
  addRun(store, 'q2', { createdAt: T0 + 1 })
  addRun(store, 'q3', { createdAt: T0 })
  addRun(store, 'x2', { createdAt: T0, status: 'running' })
  t.strictSame(store.runsWithStatus('queued').map(r => r.id), ['q1', 'q2', 'q3'])
  t.strictSame(store.runsWithStatus('running').map(r => r.id), ['x1', 'x2'])
  t.strictSame(store.runsWithStatus('failed'), [])
  t.strictSame(store.runsWithStatus('queued')[0]!.spec, spec('q1'), 'queued runs keep the spec needed to requeue them')
})

test('prune deletes old and excess finished runs with their events, never queued or running ones', async t => {
  const dir = tempDir(t)
  const store = openStore(t, dir)
  const now = T0 + 30 * DAY
  addRun(store, 'old-done', { createdAt: now - 10 * DAY, status: 'succeeded' })
  addRun(store, 'old-queued', { createdAt: now - 20 * DAY })
  addRun(store, 'old-running', { createdAt: now - 20 * DAY, status: 'running' })
  addRun(store, 'done-1', { createdAt: now - 3 * DAY, status: 'failed' })
  addRun(store, 'done-2', { createdAt: now - 2 * DAY, status: 'cancelled' })
  addRun(store, 'done-3', { createdAt: now - DAY, status: 'succeeded' })
  for (const id of ['old-done', 'old-queued', 'old-running', 'done-1', 'done-2', 'done-3']) appendN(store, id, 1, 5)
  store.flush()
  const db = reader(t, dir)

  // 7 days' retention removes old-done; keeping 2 finished runs removes done-1 as well.
  const removed = store.prune({ maxAgeMs: 7 * DAY, maxRuns: 2, now })
  t.equal(removed, 2, 'returns how many runs went')
  t.equal(store.getRun('old-done'), undefined, 'too old')
  t.equal(store.getRun('done-1'), undefined, 'the oldest finished run beyond maxRuns')
  t.equal(countEvents(db, 'old-done'), 0, 'events go with their run')
  t.equal(countEvents(db, 'done-1'), 0)
  t.strictSame(store.eventsAfter('done-1', 0, 100), [])
  t.equal(store.lastSeq('done-1'), 0)
  for (const id of ['old-queued', 'old-running', 'done-2', 'done-3']) {
    t.ok(store.getRun(id), `${id} is kept`)
    t.equal(countEvents(db, id), 5, `${id} keeps its events`)
  }
  t.equal(store.prune({ maxAgeMs: 7 * DAY, maxRuns: 2, now }), 0, 'a second prune has nothing to do')

  // The harshest settings still spare live runs, whatever their age.
  t.equal(store.prune({ maxAgeMs: 0, maxRuns: 0, now: now + DAY }), 2)
  t.strictSame(store.listRuns({ limit: 100 }).map(r => r.id).sort(), ['old-queued', 'old-running'])
  t.equal(countEvents(db), 10)
})

test('prune by age alone and by count alone', async t => {
  const store = openStore(t, tempDir(t))
  const now = T0 + 100 * DAY
  for (let i = 1; i <= 5; i++) addRun(store, `d${i}`, { createdAt: now - (6 - i) * DAY, status: 'succeeded' })
  // Ages 5..1 days. Age only: older than 2.5 days means d1, d2, d3.
  t.equal(store.prune({ maxAgeMs: 2.5 * DAY, maxRuns: 1000, now }), 3)
  t.strictSame(store.listRuns({ limit: 100 }).map(r => r.id), ['d5', 'd4'])
  // Count only: keep the newest one.
  t.equal(store.prune({ maxAgeMs: 1000 * DAY, maxRuns: 1, now }), 1)
  t.strictSame(store.listRuns({ limit: 100 }).map(r => r.id), ['d5'])
})

test('migrations: a new database is migrated; reopening does not run them again and keeps the data', async t => {
  const dir = tempDir(t)
  const first = new RunStore({ dataDir: dir, flushIntervalMs: 60_000 })
  addRun(first, 'run-1', { status: 'succeeded' })
  appendN(first, 'run-1', 1, 3)
  first.close()

  const version = () => {
    const db = new Database(join(dir, 'runs.db'), { readonly: true })
    try {
      return db.pragma('user_version', { simple: true })
    } finally {
      db.close()
    }
  }
  t.ok(MIGRATIONS.length >= 1)
  t.equal(version(), MIGRATIONS.length, 'user_version records the migrations applied')

  // Running the first migration again would fail on CREATE TABLE: opening must not try.
  const second = new RunStore({ dataDir: dir, flushIntervalMs: 60_000 })
  t.equal(second.getRun('run-1')?.status, 'succeeded', 'data kept')
  t.strictSame(seqs(second.eventsAfter('run-1', 0, 10)), [1, 2, 3])
  second.close()
  t.equal(version(), MIGRATIONS.length, 'user_version unchanged')

  const third = openStore(t, dir)
  t.equal(third.listRuns({ limit: 10 }).length, 1)
})

test('an in-memory store works without a data dir', async t => {
  const store = new RunStore({ dataDir: ':memory:', flushIntervalMs: 60_000 })
  t.teardown(() => store.close())
  addRun(store, 'run-1', { status: 'running' })
  appendN(store, 'run-1', 1, 3)
  store.flush()
  appendN(store, 'run-1', 4, 5)
  t.strictSame(seqs(store.eventsAfter('run-1', 0, 10)), [1, 2, 3, 4, 5])
})

test('throughput: 100,000 small events appended and flushed', async t => {
  const store = openStore(t, tempDir(t), { flushMaxEvents: 1000 })
  addRun(store, 'run-1', { status: 'running' })
  const data = JSON.stringify({ type: 'assistant', message: { role: 'assistant', content: [{ type: 'text', text: 'x'.repeat(120) }] } })
  t.ok(data.length >= 180 && data.length <= 220, `event data is about 200 bytes (${data.length})`)
  const n = 100_000
  const start = process.hrtime.bigint()
  for (let seq = 1; seq <= n; seq++) store.appendEvent('run-1', seq, 'message', data)
  store.flush()
  const ms = Number(process.hrtime.bigint() - start) / 1e6
  const perSecond = Math.round(n / (ms / 1000))
  t.comment(`appended and flushed ${n} events in ${ms.toFixed(0)} ms: ${perSecond} events/s`)
  t.equal(store.lastSeq('run-1'), n)
  t.ok(perSecond > 20_000, `more than 20,000 events/s (got ${perSecond})`)
})

test('paging through 10,000 stored events in pages of 500', async t => {
  const store = openStore(t, tempDir(t), { flushMaxEvents: 1000 })
  addRun(store, 'run-1', { status: 'running' })
  const data = JSON.stringify({ type: 'assistant', text: 'y'.repeat(160) })
  appendN(store, 'other-run', 1, 5000)
  for (let seq = 1; seq <= 10_000; seq++) store.appendEvent('run-1', seq, 'message', data)
  store.flush()
  const start = process.hrtime.bigint()
  let after = 0
  let pages = 0
  let count = 0
  for (;;) {
    const page = store.eventsAfter('run-1', after, 500)
    if (page.length === 0) break
    pages++
    count += page.length
    if (page[0]!.seq !== after + 1) break
    after = page.at(-1)!.seq
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6
  t.comment(`paged 10,000 events in ${pages} pages of 500 in ${ms.toFixed(1)} ms`)
  t.equal(pages, 20)
  t.equal(count, 10_000)
  t.equal(after, 10_000, 'no gaps')
  t.ok(ms < 2000, `under 2 s (got ${ms.toFixed(1)} ms)`)
})
