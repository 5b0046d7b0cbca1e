import tap, { test, type Test } from 'tap'
import pg from 'pg'
import { PostgresRunStore } from '../../src/store/postgres-store.js'
import { ClaimLost } from '../../src/store/store.js'
import { PG_MIGRATIONS } from '../../src/store/pg-migrations.js'
import { noPostgres, startPostgres, type PgServer } from '../fixtures/postgres.js'
import { addRun, appendN, newRun, OTHER_SESSION, range, result, runStoreContract, seqs, SESSION, T0, writeFailureContract } from './contract.js'

/**
 * The PostgreSQL store against a real PostgreSQL server this file starts: the contract every
 * backend passes, and what only a shared database has (instances migrating at once, the shared
 * queue's claims and cancels).
 */
let server: PgServer | undefined
const serverOnce = async (t: Test): Promise<PgServer> => {
  if (server === undefined) {
    // Stopped when the whole file is done (tap's root test).
    server = await startPostgres(tap)
  }
  void t
  return server
}

async function openStore (t: Test, url: string): Promise<PostgresRunStore> {
  // Slow flushing: the contract checks what flush(), markFinished and close do by themselves (and
  // that no more than MAX_UNFLUSHED_EVENTS wait, whatever flushMaxEvents asks).
  const store = await PostgresRunStore.open({ url, flushIntervalMs: 60_000, flushMaxEvents: 1_000_000 })
  t.teardown(() => store.close())
  return store
}

if (noPostgres !== false) {
  test('PostgreSQL store', { skip: noPostgres }, () => {})
} else {
  runStoreContract('postgres', async t => {
    const url = await (await serverOnce(t)).database()
    return { store: await openStore(t, url), reopen: async () => await openStore(t, url) }
  })

  writeFailureContract('postgres', async (t, reports) => {
    const url = await (await serverOnce(t)).database()
    const store = await PostgresRunStore.open({ url, flushIntervalMs: 5, flushMaxEvents: 10, ...reports })
    t.teardown(() => store.close())
    const admin = new pg.Client({ connectionString: url })
    await admin.connect()
    t.teardown(() => admin.end())
    // A sequence counts each failed write: it is not rolled back with the write.
    await admin.query(`CREATE SEQUENCE failed_writes;
      CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN PERFORM nextval('failed_writes'); RAISE EXCEPTION 'database or disk is full'; END $$`)
    return {
      store,
      fail: async () => { await admin.query('CREATE TRIGGER disk_full BEFORE INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION disk_full()') },
      mend: async () => { await admin.query('DROP TRIGGER disk_full ON events') },
      failedWrites: async () => (await admin.query<{ n: number }>('SELECT CASE WHEN is_called THEN last_value ELSE 0 END::int AS n FROM failed_writes')).rows[0]!.n,
      written: async runId => (await admin.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM events WHERE run_id = $1', [runId])).rows[0]!.n,
      status: async runId => (await admin.query<{ status: string }>('SELECT status FROM runs WHERE id = $1', [runId])).rows[0]?.status
    }
  })

  test('postgres: instances starting at once apply each migration exactly once', async t => {
    const url = await (await serverOnce(t)).database()
    const stores = await Promise.all(Array.from({ length: 6 }, async () => await openStore(t, url)))
    const c = new pg.Client({ connectionString: url })
    await c.connect()
    t.teardown(() => c.end())
    const { rows } = await c.query('SELECT version FROM schema_migrations ORDER BY version')
    t.strictSame(rows.map(r => r.version), range(1, PG_MIGRATIONS.length))
    await addRun(stores[0]!, 'run-1', { status: 'running' })
    appendN(stores[0]!, 'run-1', 1, 3)
    await stores[0]!.flush()
    t.strictSame(seqs(await stores[5]!.eventsAfter('run-1', 0, 10)), [1, 2, 3], 'every instance sees the same data')
  })

  test('postgres: a run claimed from the queue and not started yet is held under its owner\'s lease', async t => {
    const store = await openStore(t, await (await serverOnce(t)).database())
    await addRun(store, 'q1')
    await addRun(store, 'q2', { sessionId: OTHER_SESSION })
    t.equal((await store.queue.claim('instance-a', T0 + 100))?.record.id, 'q1', 'claimed, oldest first')
    await store.renewLeases('instance-a', T0 + 5000)
    t.match(await store.getRun('q1'), { status: 'queued', owner: 'instance-a', leaseUntil: T0 + 5000 }, 'renewed with the owner\'s running runs')
    t.match(await store.getRun('q2'), { owner: null, leaseUntil: null }, 'an unclaimed run is nobody\'s')
    t.strictSame(await store.queue.reap('instance-b', T0 + 1000, T0 + 9000, 0), [], 'so it is not reaped while the lease lasts')
    t.match(await store.getRun('q1'), { owner: 'instance-a' })
    await t.resolves(store.markStarted('q1', { startedAt: T0 + 10, marker: 'm', sessionId: SESSION, workingDirectory: '/srv/work', owner: 'instance-a', leaseUntil: T0 + 6000 }), 'its owner starts it')
    t.equal((await store.queue.claim('instance-b', T0 + 100))?.record.id, 'q2')
    const refused = await store.markStarted('q2', { startedAt: T0 + 10, marker: 'm', sessionId: SESSION, workingDirectory: '/srv/work', owner: 'instance-c', leaseUntil: T0 + 6000 }).then(() => undefined, (err: unknown) => err)
    t.ok(refused instanceof ClaimLost, 'a run another instance claimed is not started elsewhere')
  })

  test('postgres: cancelQueued writes a queued run\'s end as markFinished does, drops its messages, and gives its result event\'s seq', async t => {
    const url = await (await serverOnce(t)).database()
    const store = await openStore(t, url)
    await store.insertRun(newRun('q1', { createdAt: T0 }))
    store.appendEvent('q1', 1, 'run', '{}')
    const turn = { prompt: 'and then?' }
    t.strictSame(await store.queue.postMessage('q1', { id: 'm1', turn, bytes: 9 }, () => {}), { queued: true }, 'a message waits for the claimer')
    const res = result('q1', 'cancelled', { error_code: 'cancelled' })
    const ended = await store.queue.cancelQueued('q1', r => ({ ...res, run_id: r.id }))
    t.equal(ended?.seq, 2, 'past the waiting events')
    t.equal(ended?.record.status, 'queued', 'the record as it was')
    t.strictSame(ended?.result, res)
    const other = await openStore(t, url)
    t.match(await other.getRun('q1'), { status: 'cancelled', endedAt: Date.parse(res.timestamp), spec: null }, 'written')
    t.strictSame((await other.getRun('q1'))?.result, res)
    t.equal((await other.getSession(SESSION))?.updatedAt, Date.parse(res.timestamp), 'its end is its session\'s activity')
    t.equal(await store.queue.cancelQueued('q1', () => res), undefined, 'an ended run is not cancelled again')
    t.strictSame(await store.queue.postMessage('q1', { id: 'm2', turn, bytes: 9 }, () => {}), { finished: true }, 'nor does it take messages')
    const admin = new pg.Client({ connectionString: url })
    await admin.connect()
    t.teardown(() => admin.end())
    t.equal((await admin.query('SELECT 1 FROM queued_messages')).rows.length, 0, 'the waiting message went with it')
    await store.insertRun(newRun('q2', { createdAt: T0 }))
    t.match(await store.queue.claim('instance-a', T0 + 100), { record: { id: 'q2' }, messages: [] }, 'the session\'s next run may be claimed')
  })

  test('postgres: a server that is not there is a clear error', async t => {
    await t.rejects(PostgresRunStore.open({ url: 'postgres://postgres@127.0.0.1:1/nothing' }), /ECONNREFUSED|connect/)
  })
}
