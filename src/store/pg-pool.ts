import pg from 'pg'
import { PG_MIGRATIONS } from './pg-migrations.js'

/** Held while migrations run, so instances starting at once apply each exactly once. */
const MIGRATION_LOCK = 0x63636170 // 'ccap'

// BIGINT columns hold epoch milliseconds and row numbers: well within a double.
pg.types.setTypeParser(pg.types.builtins.INT8, v => Number(v))

/**
 * Connect to the database and apply what migrations are missing (one instance at a time). An idle
 * connection that breaks (the server restarts) is replaced, not fatal: `onError` hears of it.
 */
export async function openPool (url: string, size: number, onError?: (err: Error) => void): Promise<pg.Pool> {
  const pool = new pg.Pool({ connectionString: url, max: size })
  pool.on('error', err => onError?.(err))
  try {
    await migrate(pool)
  } catch (err) {
    await pool.end()
    throw err
  }
  return pool
}

/** Run `fn` in a transaction on a pooled connection: committed when it returns, rolled back when it throws. */
export async function inTransaction<T> (pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await pool.connect()
  try {
    await c.query('BEGIN')
    const out = await fn(c)
    await c.query('COMMIT')
    return out
  } catch (err) {
    await c.query('ROLLBACK').catch(() => {})
    throw err
  } finally {
    c.release()
  }
}

/** Apply the migrations not yet applied, holding an advisory lock so only one instance does. */
async function migrate (pool: pg.Pool): Promise<void> {
  await inTransaction(pool, async c => {
    await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK])
    await c.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)')
    const { rows } = await c.query<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_migrations')
    for (let v = rows[0]?.v ?? 0; v < PG_MIGRATIONS.length; v++) {
      await c.query(PG_MIGRATIONS[v]!)
      await c.query('INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)', [v + 1, Date.now()])
    }
  })
}
