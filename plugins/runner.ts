import fp from 'fastify-plugin'
import { Runner } from '../src/runner/runner.js'
import { RunStore } from '../src/store/run-store.js'

declare module 'fastify' {
  interface FastifyInstance {
    runner: Runner
  }
}

/**
 * The run engine as a decorator, with its store in `DATA_DIR`. At start it probes the CLI and
 * recovers what a previous process left; on close it drains (`SHUTDOWN_GRACE_S`) and ends every
 * running run's process tree before the server lets go.
 */
export default fp(async (fastify) => {
  const store = new RunStore({ dataDir: fastify.config.dataDir, onError: err => fastify.log.error({ err }, 'writing the event log failed; will retry') })
  const runner = new Runner(fastify.config, fastify.log.child({ component: 'runner' }), store)
  await runner.start()
  fastify.decorate('runner', runner)
  // preClose, not onClose: open streams wait for their runs, so the runs must end first.
  fastify.addHook('preClose', async () => {
    await runner.close()
  })
}, { name: 'runner', dependencies: ['config'] })
