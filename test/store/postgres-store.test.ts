import tap, { test, type Test } from 'tap'
import pg from 'pg'
import { PostgresRunStore } from '../../src/store/postgres-store.js'
import { PG_MIGRATIONS } from '../../src/store/pg-migrations.js'
import { noPostgres, startPostgres, type PgServer } from '../fixtures/postgres.js'
import { addRun, appendN, range, runStoreContract, seqs, writeFailureContract } from './contract.js'

/**
 * The PostgreSQL store against a real PostgreSQL server this file starts: the contract every
 * backend passes, and what only a shared database has (instances migrating at once).
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
  // Slow flushing: the contract checks what flush(), markFinished and close do by themselves.
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
      written: async runId => (await admin.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM events WHERE run_id = $1', [runId])).rows[0]!.n
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

  test('postgres: a server that is not there is a clear error', async t => {
    await t.rejects(PostgresRunStore.open({ url: 'postgres://postgres@127.0.0.1:1/nothing' }), /ECONNREFUSED|connect/)
  })
}
