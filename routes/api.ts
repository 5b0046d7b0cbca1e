import type { FastifyPluginAsync } from 'fastify'
import { rateLimit } from '../plugins/auth.js'
import { sendProblem } from '../plugins/problem.js'
import executeRoutes from './execute.js'
import runsRoutes from './runs.js'
import interactiveRoutes from './interactive.js'
import sessionsRoutes from './sessions.js'
import filesRoutes from './files.js'
import changesRoutes from './changes.js'
import toolsRoutes from './tools.js'

/**
 * The `/api` scope: every API route, and what belongs to them alone, registered here so
 * encapsulation (not URL matching) decides where it applies: the wait for recovery at start,
 * the key check (also for unknown `/api` paths, so a 404 never tells what exists to a client
 * without a key), the per-key rate limit, HTTP metrics, and the API's not-found answer.
 * `/health`, `/metrics` and the docs stay outside and pay for none of it.
 */
const api: FastifyPluginAsync = async (fastify) => {
  // Once the server listens, the engine recovers what a previous process left; a request that
  // arrives meanwhile waits for it: a run that process left queued is live again once recovered,
  // not "finished" in between.
  fastify.addHook('onRequest', async () => {
    if (fastify.server.listening) await fastify.engine.recovered()
  })
  if (fastify.authenticate !== undefined) fastify.addHook('onRequest', fastify.authenticate)
  if (fastify.rateLimitOptions !== undefined) await fastify.register(rateLimit, fastify.rateLimitOptions)
  fastify.addHook('onResponse', fastify.observeHttp)
  fastify.setNotFoundHandler((request, reply) =>
    sendProblem(request, reply, 404, 'not_found', `No route ${request.method} ${request.url.split('?')[0]}`))

  await fastify.register(executeRoutes)
  await fastify.register(runsRoutes)
  await fastify.register(interactiveRoutes)
  await fastify.register(sessionsRoutes)
  await fastify.register(filesRoutes)
  await fastify.register(changesRoutes)
  await fastify.register(toolsRoutes)
}

export default api
