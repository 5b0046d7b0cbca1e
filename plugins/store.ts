import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { SqliteRunStore } from '../src/store/sqlite-store.js'
import { PostgresRunStore } from '../src/store/postgres-store.js'
import type { WriteReports } from '../src/store/write-retry.js'
import { DataDirLock } from '../src/store/data-dir-lock.js'
import type { RunStore } from '../src/store/store.js'
import { ConfigError } from '../src/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * The run store: SQLite in `DATA_DIR`, or PostgreSQL with `DATABASE_URL`. For the plugins that
     * build on it (the engine, webhooks); routes read through the read model (plugins/read-model.ts).
     */
    store: RunStore
    /** This server instance's id, kept in `DATA_DIR`: it owns the runs it starts. */
    instanceId: string
  }
}

/** The PostgreSQL run store; a database that cannot be reached stops the start with one line. */
async function openPostgres (url: string, instanceId: string, reports: Required<WriteReports>): Promise<PostgresRunStore> {
  try {
    return await PostgresRunStore.open({ url, origin: instanceId, ...reports })
  } catch (err) {
    const where = redactUrl(url)
    throw new ConfigError(`DATABASE_URL ${where}: cannot open the run store (${(err as Error).message})`)
  }
}

/** A database URL fit for a log line: no password. */
function redactUrl (url: string): string {
  try {
    const u = new URL(url)
    if (u.password !== '') u.password = '***'
    return u.toString()
  } catch {
    return '(not a URL)'
  }
}

/** This server's instance id, kept in `DATA_DIR` so a restart recovers the runs it owned. */
function instanceIdOf (dataDir: string): string {
  const file = join(dataDir, 'instance-id')
  if (existsSync(file)) {
    const id = readFileSync(file, 'utf8').trim()
    if (id !== '') return id
  }
  const id = randomUUID()
  writeFileSync(file, id + '\n', { mode: 0o600 })
  return id
}

/**
 * `DATA_DIR`, locked first (one server per directory), this instance's id, and the run store:
 * SQLite in `DATA_DIR`, or PostgreSQL when `DATABASE_URL` is set (cluster mode: any number of
 * instances share the database, each with a `DATA_DIR` of its own). What it opened is let go if
 * opening the store fails, and on close, the lock last.
 */
export default fp(async (fastify) => {
  const { dataDir, databaseUrl } = fastify.config
  const lock = DataDirLock.acquire(dataDir)
  if (lock.closed.length > 0) fastify.log.warn({ paths: lock.closed }, 'DATA_DIR was open to other users: closed it to them (0700, files 0600)')
  if (lock.open.length > 0) fastify.log.warn({ paths: lock.open }, 'files in DATA_DIR are open to other users and not this user\'s to close (the 0700 DATA_DIR keeps them out): chmod go-rwx them')
  let store: RunStore
  let instanceId: string
  try {
    // Once when writing starts failing (a full disk), once when it works again: the retries between
    // back off and say nothing, however long it lasts.
    const writes: Required<WriteReports> = {
      onError: (err: Error): void => fastify.log.error({ err }, 'writing the event log failed; will retry, backing off, and say when it works again'),
      onRecovered: (failedAttempts: number): void => fastify.log.info({ failed_attempts: failedAttempts }, `writing the event log works again after ${failedAttempts} failed attempts`)
    }
    instanceId = instanceIdOf(dataDir)
    store = databaseUrl !== undefined
      ? await openPostgres(databaseUrl, instanceId, writes)
      : new SqliteRunStore({ dataDir, ...writes })
  } catch (err) {
    lock.release()
    throw err
  }
  fastify.decorate('store', store)
  fastify.decorate('instanceId', instanceId)
  // Also when a later plugin fails to start and the app is closed. The engine closes the store
  // first (preClose, after its runs); closing it again does nothing.
  fastify.addHook('onClose', async () => {
    await store.close().catch(() => {})
    lock.release()
  })
}, { name: 'store', dependencies: ['config'] })
