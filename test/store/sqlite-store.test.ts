import { test, type Test } from 'tap'
import Database from 'better-sqlite3'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { SqliteRunStore, type RunStoreOptions } from '../../src/store/sqlite-store.js'
import { MIGRATIONS } from '../../src/store/migrations.js'
import { addRun, appendN, evt, range, result, runStoreContract, seqs, spec, T0, writeFailureContract } from './contract.js'

const repoRoot = fileURLToPath(new URL('../../', import.meta.url))

/** A temp data dir removed when the test ends (after the stores opened later are closed). */
function tempDir (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'sqlite-store-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/**
 * A store that flushes only when told (or at a batch size the test picks; the store holds no more
 * than `MAX_UNFLUSHED_EVENTS` back, whatever it is asked), closed at teardown.
 * Teardowns run in reverse order, so the store is closed before its directory is removed.
 */
function openStore (t: Test, dataDir: string, opts: Partial<RunStoreOptions> = {}): SqliteRunStore {
  const store = new SqliteRunStore({ dataDir, flushIntervalMs: 60_000, flushMaxEvents: 1_000_000, ...opts })
  t.teardown(() => store.close())
  return store
}

/** A second, independent connection: sees only what the store committed to disk. */
function reader (t: Test, dataDir: string): Database.Database {
  const db = new Database(join(dataDir, 'runs.db'), { readonly: true })
  t.teardown(() => db.close())
  return db
}

const countEvents = (db: Database.Database, runId?: string): number => runId === undefined
  ? (db.prepare('SELECT COUNT(*) AS n FROM events').get() as { n: number }).n
  : (db.prepare('SELECT COUNT(*) AS n FROM events WHERE run_id = ?').get(runId) as { n: number }).n

runStoreContract('sqlite', async t => {
  const dir = tempDir(t)
  // close() is idempotent, so the stores a test closed itself are closed again harmlessly.
  return { store: openStore(t, dir), reopen: async () => openStore(t, dir) }
})

writeFailureContract('sqlite', async (t, reports) => {
  const dir = tempDir(t)
  const store = openStore(t, dir, { flushIntervalMs: 5, flushMaxEvents: 10, ...reports })
  // Counted on the store's own connection: a trigger's writes are rolled back with the failed write.
  let failed = 0
  ;(store as unknown as { db: Database.Database }).db.function('count_failed_write', () => ++failed)
  const admin = new Database(join(dir, 'runs.db'))
  admin.pragma('busy_timeout = 5000')
  t.teardown(() => admin.close())
  return {
    store,
    fail: async () => {
      admin.exec('CREATE TRIGGER disk_full BEFORE INSERT ON events BEGIN SELECT count_failed_write(); SELECT RAISE(ABORT, \'database or disk is full\'); END')
    },
    mend: async () => { admin.exec('DROP TRIGGER disk_full') },
    failedWrites: async () => failed,
    written: async runId => countEvents(admin, runId),
    status: async runId => (admin.prepare('SELECT status FROM runs WHERE id = ?').get(runId) as { status: string } | undefined)?.status
  }
})

test('event writes are batched: a full batch is written at flushMaxEvents, the rest waits for flush()', async t => {
  const dir = tempDir(t)
  const store = openStore(t, dir, { flushMaxEvents: 100 })
  await addRun(store, 'run-1', { status: 'running' })
  const db = reader(t, dir)
  appendN(store, 'run-1', 1, 99)
  t.equal(countEvents(db), 0, '99 events: still waiting')
  appendN(store, 'run-1', 100, 250)
  t.equal(countEvents(db), 200, 'two full batches written, 50 waiting')
  t.equal(await store.lastSeq('run-1'), 250, 'reads see the waiting ones too')
  t.equal((await store.eventsAfter('run-1', 0, 1000)).length, 250)
  await store.flush()
  t.equal(countEvents(db), 250, 'flush() writes the rest')
  await store.flush()
  t.equal(countEvents(db), 250, 'a second flush writes nothing twice')
  t.strictSame(seqs(await store.eventsAfter('run-1', 0, 1000)), range(1, 250))
})

test('a batch is written at flushMaxBytes too', async t => {
  const dir = tempDir(t)
  const store = openStore(t, dir, { flushMaxBytes: 1000 })
  await addRun(store, 'run-1', { status: 'running' })
  const db = reader(t, dir)
  const data = JSON.stringify('z'.repeat(98))
  for (let seq = 1; seq <= 9; seq++) store.appendEvent('run-1', seq, 'message', data)
  t.equal(countEvents(db), 0, '900 bytes: still waiting')
  store.appendEvent('run-1', 10, 'message', data)
  t.equal(countEvents(db), 10, '1000 bytes: written')
})

test('the flush timer writes waiting events on its own', async t => {
  const dir = tempDir(t)
  const store = openStore(t, dir, { flushIntervalMs: 10 })
  await addRun(store, 'run-1', { status: 'running' })
  const db = reader(t, dir)
  appendN(store, 'run-1', 1, 5)
  t.equal(countEvents(db), 0)
  const deadline = Date.now() + 2000
  while (countEvents(db) < 5 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 10))
  t.equal(countEvents(db), 5, 'written within a few intervals without flush() or close()')
})

test('markFinished writes the waiting events before the run is finished on disk', async t => {
  const dir = tempDir(t)
  const store = openStore(t, dir)
  await addRun(store, 'run-1', { status: 'running' })
  const db = reader(t, dir)
  appendN(store, 'run-1', 1, 4)
  t.equal(countEvents(db), 0)
  await store.markFinished('run-1', result('run-1', 'succeeded'), T0 + 1000)
  t.equal(countEvents(db, 'run-1'), 4, 'the log is complete on disk when the run is marked finished')
})

test('flushed events survive a crash: a store that was never closed is read by a new one', async t => {
  const dir = tempDir(t)
  // Never closed before the second store opens: like a process killed with -9. Its timer is
  // unref'd, so it would not keep the process alive; teardown closes it only to free the handle.
  const crashed = openStore(t, dir)
  await addRun(crashed, 'run-1', { status: 'running' })
  appendN(crashed, 'run-1', 1, 30)
  await crashed.flush()
  appendN(crashed, 'run-1', 31, 35)

  const next = openStore(t, dir)
  t.equal((await next.getRun('run-1'))?.status, 'running')
  t.equal((await next.getRun('run-1'))?.marker, 'marker-run-1', 'the marker is there to clean up leftovers')
  t.strictSame(await next.eventsAfter('run-1', 0, 100), range(1, 30).map(evt), 'the flushed events, not the waiting ones')
  t.equal(await next.lastSeq('run-1'), 30)
})

test('a process killed with SIGKILL keeps its flushed events; only the unflushed batch is lost', async t => {
  const dir = tempDir(t)
  const storeUrl = new URL('../../src/store/sqlite-store.ts', import.meta.url).href
  const code = `
    const { SqliteRunStore } = await import(${JSON.stringify(storeUrl)})
    const store = new SqliteRunStore({ dataDir: ${JSON.stringify(dir)}, flushIntervalMs: 60000, flushMaxEvents: 1000000 })
    await store.insertRun({ id: 'run-1', sessionId: 's', workingDirectory: '/w', request: {}, spec: {}, keyName: null, cancelOnDisconnect: false, createdAt: 1 })
    await store.markStarted('run-1', { startedAt: 2, marker: 'm', sessionId: 's', workingDirectory: '/w', owner: 'dead-instance', leaseUntil: 3 })
    for (let seq = 1; seq <= 40; seq++) store.appendEvent('run-1', seq, 'message', '{}')
    await store.flush()
    for (let seq = 41; seq <= 45; seq++) store.appendEvent('run-1', seq, 'message', '{}')
    process.kill(process.pid, 'SIGKILL')
  `
  const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: repoRoot, encoding: 'utf8', timeout: 30_000 })
  t.equal(child.signal, 'SIGKILL', `the child died by SIGKILL (stderr: ${child.stderr})`)

  const store = openStore(t, dir)
  t.match(await store.getRun('run-1'), { status: 'running', marker: 'm', owner: 'dead-instance', leaseUntil: 3 })
  t.equal(await store.lastSeq('run-1'), 40, 'every flushed event is there')
  t.strictSame(seqs(await store.eventsAfter('run-1', 0, 100)), range(1, 40))
  t.strictSame((await store.leftovers('new-instance', 4)).running.map(r => r.id), ['run-1'], 'its lease lapsed: recovery takes it')
})

test('migrations: a new database is migrated; reopening does not run them again and keeps the data', async t => {
  const dir = tempDir(t)
  const first = new SqliteRunStore({ dataDir: dir, flushIntervalMs: 60_000 })
  await addRun(first, 'run-1', { status: 'succeeded' })
  appendN(first, 'run-1', 1, 3)
  await first.close()

  const version = (): unknown => {
    const db = new Database(join(dir, 'runs.db'), { readonly: true })
    try {
      return db.pragma('user_version', { simple: true })
    } finally {
      db.close()
    }
  }
  t.ok(MIGRATIONS.length >= 3)
  t.equal(version(), MIGRATIONS.length, 'user_version records the migrations applied')

  // Running the first migration again would fail on CREATE TABLE: opening must not try.
  const second = new SqliteRunStore({ dataDir: dir, flushIntervalMs: 60_000 })
  t.equal((await second.getRun('run-1'))?.status, 'succeeded', 'data kept')
  t.strictSame(seqs(await second.eventsAfter('run-1', 0, 10)), [1, 2, 3])
  await second.close()
  t.equal(version(), MIGRATIONS.length, 'user_version unchanged')

  const third = openStore(t, dir)
  t.equal((await third.listRuns({ limit: 10 })).length, 1)
})

test('migrations: a database from before run ownership is migrated; its running runs have no owner and are leftovers for anyone', async t => {
  const dir = tempDir(t)
  const ownership = MIGRATIONS.findIndex(m => m.includes('ADD COLUMN owner'))
  t.ok(ownership > 0, 'setup: the ownership migration exists')
  const old = new Database(join(dir, 'runs.db'))
  for (let v = 0; v < ownership; v++) old.exec(MIGRATIONS[v]!)
  old.pragma(`user_version = ${ownership}`)
  const insert = old.prepare(`INSERT INTO runs (id, status, session_id, working_directory, request, spec, key_name, cancel_on_disconnect, marker, created_at, started_at)
    VALUES (?, ?, 's', '/w', '{"prompt":"hi"}', ?, 'alice', 0, ?, 1, ?)`)
  insert.run('old-running', 'running', null, 'marker-old', 2)
  insert.run('old-queued', 'queued', JSON.stringify(spec('old-queued')), null, null)
  old.close()

  const store = openStore(t, dir)
  t.match(await store.getRun('old-running'), { status: 'running', marker: 'marker-old', owner: null, leaseUntil: null, keyName: 'alice' })
  const left = await store.leftovers('any-instance', T0)
  t.strictSame(left.running.map(r => r.id), ['old-running'], 'a running run nobody owns is recovered')
  t.strictSame(left.queued.map(r => r.id), ['old-queued'])
  t.strictSame(left.queued[0]!.spec, spec('old-queued'))
  const db = reader(t, dir)
  t.equal(db.pragma('user_version', { simple: true }), MIGRATIONS.length)
})

test('migrations: sessions known before sessions were records are taken from their first run', async t => {
  const dir = tempDir(t)
  const sessions = MIGRATIONS.findIndex(m => m.includes('CREATE TABLE sessions'))
  t.ok(sessions > 0, 'setup: the sessions migration exists')
  const old = new Database(join(dir, 'runs.db'))
  for (let v = 0; v < sessions; v++) old.exec(MIGRATIONS[v]!)
  old.pragma(`user_version = ${sessions}`)
  const insert = old.prepare(`INSERT INTO runs (id, status, session_id, working_directory, request, key_name, created_at, ended_at)
    VALUES (?, ?, ?, '/w', ?, ?, ?, ?)`)
  insert.run('r1', 'succeeded', 's1', '{"prompt":"first of s1"}', 'alice', 10, 20)
  insert.run('r2', 'succeeded', 's1', '{"prompt":"second"}', 'bob', 30, 40)
  insert.run('r3', 'queued', 's2', '{"prompt":"only"}', null, 50, null)
  old.close()

  const store = openStore(t, dir)
  t.match(await store.getSession('s1'), { keyName: 'alice', workingDirectory: '/w', firstPrompt: 'first of s1', createdAt: 10, updatedAt: 40, runCount: 2, lastRunId: 'r2', busy: false })
  t.match(await store.getSession('s2'), { keyName: null, createdAt: 50, updatedAt: 50, busy: true })
  t.strictSame((await store.listSessions({ limit: 10 })).map(s => s.id), ['s2', 's1'])
})

test('an in-memory store works without a data dir', async t => {
  const store = new SqliteRunStore({ dataDir: ':memory:', flushIntervalMs: 60_000 })
  t.teardown(() => store.close())
  await addRun(store, 'run-1', { status: 'running' })
  appendN(store, 'run-1', 1, 3)
  await store.flush()
  appendN(store, 'run-1', 4, 5)
  t.strictSame(seqs(await store.eventsAfter('run-1', 0, 10)), [1, 2, 3, 4, 5])
  t.equal((await store.getRun('run-1'))?.status, 'running')
})

test('throughput: 100,000 small events appended and flushed', async t => {
  const store = openStore(t, tempDir(t), { flushMaxEvents: 1000 })
  await addRun(store, 'run-1', { status: 'running' })
  const data = JSON.stringify({ type: 'assistant', message: { role: 'assistant', content: [{ type: 'text', text: 'x'.repeat(120) }] } })
  t.ok(data.length >= 180 && data.length <= 220, `event data is about 200 bytes (${data.length})`)
  const n = 100_000
  const start = process.hrtime.bigint()
  for (let seq = 1; seq <= n; seq++) store.appendEvent('run-1', seq, 'message', data)
  await store.flush()
  const ms = Number(process.hrtime.bigint() - start) / 1e6
  const perSecond = Math.round(n / (ms / 1000))
  t.comment(`appended and flushed ${n} events in ${ms.toFixed(0)} ms: ${perSecond} events/s`)
  t.equal(await store.lastSeq('run-1'), n)
  t.ok(perSecond > 20_000, `more than 20,000 events/s (got ${perSecond})`)
})

test('paging through 10,000 stored events in pages of 500', async t => {
  const store = openStore(t, tempDir(t), { flushMaxEvents: 1000 })
  await addRun(store, 'run-1', { status: 'running' })
  const data = JSON.stringify({ type: 'assistant', text: 'y'.repeat(160) })
  appendN(store, 'other-run', 1, 5000)
  for (let seq = 1; seq <= 10_000; seq++) store.appendEvent('run-1', seq, 'message', data)
  await store.flush()
  const start = process.hrtime.bigint()
  let after = 0
  let pages = 0
  let count = 0
  for (;;) {
    const page = await store.eventsAfter('run-1', after, 500)
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
