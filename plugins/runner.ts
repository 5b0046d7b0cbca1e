import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Runner } from '../src/runner/runner.js'
import { SqliteRunStore } from '../src/store/sqlite-store.js'
import { LocalEventBus } from '../src/store/event-bus.js'
import { DataDirLock } from '../src/store/data-dir-lock.js'

declare module 'fastify' {
  interface FastifyInstance {
    runner: Runner
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
  writeFileSync(file, id + '\n')
  return id
}

/**
 * The run engine as a decorator, with its store in `DATA_DIR`, which it locks first (one server
 * per directory). At start it probes the CLI; once the server listens it recovers what a previous
 * process left; on close it drains (`SHUTDOWN_GRACE_S`) and ends every running run's process tree
 * before the server lets go.
 */
export default fp(async (fastify) => {
  const { dataDir } = fastify.config
  const lock = DataDirLock.acquire(dataDir)
  let runner: Runner
  let store: SqliteRunStore | undefined
  try {
    store = new SqliteRunStore({ dataDir, onError: err => fastify.log.error({ err }, 'writing the event log failed; will retry') })
    runner = new Runner({ settings: fastify.config, log: fastify.log.child({ component: 'runner' }), store, bus: new LocalEventBus(), instanceId: instanceIdOf(dataDir) })
    await runner.start()
  } catch (err) {
    await store?.close().catch(() => {})
    lock.release()
    throw err
  }
  fastify.decorate('runner', runner)
  // Only a server that got its port may kill and requeue what a previous one left.
  fastify.addHook('onListen', async () => {
    await runner.recover()
  })
  // preClose, not onClose: open streams wait for their runs, so the runs must end first.
  fastify.addHook('preClose', async () => {
    await runner.close()
  })
  fastify.addHook('onClose', async () => { lock.release() })
}, { name: 'runner', dependencies: ['config'] })
