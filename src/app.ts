import type { FastifyPluginAsync, FastifyServerOptions } from 'fastify'
import type { Environment, TrustProxy } from './config.js'
import configPlugin from '../plugins/config.js'
import problemPlugin from '../plugins/problem.js'
import docsPlugin from '../plugins/docs.js'
import corsPlugin from '../plugins/cors.js'
import authPlugin, { type AuthPluginOptions } from '../plugins/auth.js'
import runnerPlugin from '../plugins/runner.js'
import ssePlugin from '../plugins/sse.js'
import startRunPlugin from '../plugins/start-run.js'
import webhooksPlugin from '../plugins/webhooks.js'
import metricsPlugin from '../plugins/metrics.js'
import healthRoutes from '../routes/health.js'
import apiRoutes from '../routes/api.js'

export interface AppOptions extends AuthPluginOptions {
  /** The environment settings are read from (the server's own, or a test's). */
  env: Environment
  /** Directory relative paths in the settings are resolved from. */
  cwd?: string
}

/** Fastify options the app expects from whoever builds the instance (server or test). */
export function serverOptions (logLevel: string, trustProxy: TrustProxy = false): FastifyServerOptions {
  return {
    // Behind Nginx: believe X-Forwarded-For from the configured proxies, so logs show the client.
    trustProxy,
    logger: {
      level: logLevel,
      redact: { paths: ['req.headers["x-api-key"]', 'req.headers.authorization', 'headers["x-api-key"]', 'headers.authorization'], censor: '[redacted]' }
    },
    // Only we decide the body limit per route; this is the ceiling for anything else.
    bodyLimit: 1024 * 1024,
    // A request (headers and body) must arrive within 30 s: a client trickling a body cannot hold a
    // connection (and a file descriptor) for minutes. Responses (streams) are not limited by it.
    requestTimeout: 30_000,
    // While draining, our own handlers answer: 503 problem+json for new runs, health says so,
    // and the runs API still reads.
    return503OnClosing: false,
    ajv: { customOptions: { removeAdditional: false } }
  }
}

/**
 * The whole service as one plugin. Read top to bottom, the registrations are the architecture:
 * configuration, then infrastructure (errors, docs, CORS), then our decorators (auth, runner,
 * start-run, webhooks, metrics), then routes: health outside, the API in its own scope.
 */
const app: FastifyPluginAsync<AppOptions> = async (fastify, opts) => {
  await fastify.register(configPlugin, { env: opts.env, ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}) })

  await fastify.register(problemPlugin)
  await fastify.register(docsPlugin)
  await fastify.register(corsPlugin)

  await fastify.register(authPlugin, opts.announce !== undefined ? { announce: opts.announce } : {})
  await fastify.register(runnerPlugin)
  await fastify.register(ssePlugin)
  await fastify.register(startRunPlugin)
  await fastify.register(webhooksPlugin)
  await fastify.register(metricsPlugin)

  await fastify.register(healthRoutes)
  // Everything under /api, with its auth, rate limit, metrics and not-found handler.
  await fastify.register(apiRoutes, { prefix: '/api' })
}

export default app
