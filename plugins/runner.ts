import fp from 'fastify-plugin'
import { Runner } from '../src/runner/runner.js'
import { RunStore } from '../src/store/run-store.js'
import { DataDirLock } from '../src/store/data-dir-lock.js'

declare module 'fastify' {
  interface FastifyInstance {
    runner: Runner
  }
}

/**
 * The run engine as a decorator, with its store in `DATA_DIR`, which it locks first (one server
 * per directory). At start it probes the CLI; once the server listens it recovers what a previous
 * process left; on close it drains (`SHUTDOWN_GRACE_S`) and ends every running run's process tree
 * before the server lets go.
 */
export default fp(async (fastify) => {
  const lock = DataDirLock.acquire(fastify.config.dataDir)
  let runner: Runner
  try {
    const store = new RunStore({ dataDir: fastify.config.dataDir, onError: err => fastify.log.error({ err }, 'writing the event log failed; will retry') })
    runner = new Runner(fastify.config, fastify.log.child({ component: 'runner' }), store)
    await runner.start()
  } catch (err) {
    lock.release()
    throw err
  }
  fastify.addHook('onClose', async () => { lock.release() })
  fastify.decorate('runner', runner)
  // Only a server that got its port may kill and requeue what a previous one left.
  fastify.addHook('onListen', async () => {
    await runner.recover()
  })
  // preClose, not onClose: open streams wait for their runs, so the runs must end first.
  fastify.addHook('preClose', async () => {
    await runner.close()
  })
}, { name: 'runner', dependencies: ['config'] })
