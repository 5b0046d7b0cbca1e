import fp from 'fastify-plugin'
import { Runner } from '../src/runner/runner.js'

declare module 'fastify' {
  interface FastifyInstance {
    runner: Runner
  }
}

/**
 * The run engine as a decorator. Probes the CLI at start; on close, stops admitting and ends
 * every run's process tree before the server lets go.
 */
export default fp(async (fastify) => {
  const runner = new Runner(fastify.config, fastify.log.child({ component: 'runner' }))
  await runner.start()
  fastify.decorate('runner', runner)
  // preClose, not onClose: open streams wait for their runs, so the runs must end first.
  fastify.addHook('preClose', async () => {
    await runner.close()
  })
}, { name: 'runner', dependencies: ['config'] })
