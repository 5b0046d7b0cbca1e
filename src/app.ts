import type { FastifyHttpOptions, FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { Server } from 'node:http'
import type { Environment, TrustProxy } from './config.js'
import configPlugin from '../plugins/config.js'
import problemPlugin from '../plugins/problem.js'
import docsPlugin from '../plugins/docs.js'
import consolePlugin from '../plugins/console.js'
import corsPlugin from '../plugins/cors.js'
import authPlugin, { type AuthPluginOptions } from '../plugins/auth.js'
import storePlugin from '../plugins/store.js'
import isolationPlugin from '../plugins/isolation.js'
import enginePlugin from '../plugins/engine.js'
import readModelPlugin from '../plugins/read-model.js'
import ssePlugin from '../plugins/sse.js'
import startRunPlugin from '../plugins/start-run.js'
import webhooksPlugin from '../plugins/webhooks.js'
import metricsPlugin from '../plugins/metrics.js'
import healthRoutes from '../routes/health.js'
import apiRoutes from '../routes/api.js'
import v1Routes from '../routes/v1.js'

export interface AppOptions extends AuthPluginOptions {
  /** The environment settings are read from (the server's own, or a test's). */
  env: Environment
  /** Directory relative paths in the settings are resolved from. */
  cwd?: string
}

/** How long one plugin may take to start before the start fails (Fastify's default: 10 s). */
export const PLUGIN_TIMEOUT_MS = 120_000

/** Fastify options the app expects from whoever builds the instance (server or test). */
export function serverOptions (logLevel: string, trustProxy: TrustProxy = false, requestTimeoutS = 30): FastifyHttpOptions<Server> {
  const requestTimeout = requestTimeoutS * 1000
  return {
    // Behind Nginx: believe X-Forwarded-For from the configured proxies, so logs show the client.
    trustProxy,
    logger: {
      level: logLevel,
      redact: { paths: ['req.headers["x-api-key"]', 'req.headers.authorization', 'headers["x-api-key"]', 'headers.authorization'], censor: '[redacted]' }
    },
    // Only we decide the body limit per route; this is the ceiling for anything else.
    bodyLimit: 1024 * 1024,
    // A request (headers and body) must arrive within REQUEST_TIMEOUT_S (30 s), its headers within
    // 15 s: a client trickling them cannot hold a connection (and a file descriptor) for minutes.
    // Responses (streams) are not limited by it. Checked every second (Node's default: 30 s).
    requestTimeout,
    http: { headersTimeout: Math.min(15_000, requestTimeout), connectionsCheckingInterval: 1000 },
    // While draining, our own handlers answer: 503 problem+json for new runs, health says so,
    // and the runs API still reads.
    return503OnClosing: false,
    // Starting the engine probes the CLI (a Node process), isolation tries bubblewrap, the store
    // opens: a few seconds each, many more on a loaded 2-core machine (the test suite, a busy
    // host), where Fastify's default 10 s failed the start with "Plugin did not start in time:
    // 'runner'". A start that truly hangs still fails, after 120 s, naming the plugin.
    pluginTimeout: PLUGIN_TIMEOUT_MS,
    ajv: { customOptions: { removeAdditional: false } }
  }
}

/**
 * At most MAX_CONNECTIONS connections at once: the next are closed as they arrive (and logged, at
 * most every 10 s), so a flood of clients cannot take the descriptors that runs and the store need.
 */
function limitConnections (fastify: FastifyInstance): void {
  fastify.server.maxConnections = fastify.config.maxConnections
  let lastWarned = 0
  let dropped = 0
  fastify.server.on('drop', () => {
    dropped++
    if (Date.now() - lastWarned < 10_000) return
    lastWarned = Date.now()
    fastify.log.warn({ max_connections: fastify.config.maxConnections, dropped }, 'connection limit reached: new connections are closed')
    dropped = 0
  })
}

/**
 * The whole service as one plugin. Read top to bottom, the registrations are the architecture:
 * configuration, then infrastructure (errors, docs, CORS), then our decorators (auth; isolation,
 * the store, the engine built on both, the read model routes use; start-run, sse, webhooks,
 * metrics), then routes: health outside, the API in its own scope.
 */
const app: FastifyPluginAsync<AppOptions> = async (fastify, opts) => {
  await fastify.register(configPlugin, { env: opts.env, ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}) })

  limitConnections(fastify)

  await fastify.register(problemPlugin)
  await fastify.register(docsPlugin)
  await fastify.register(consolePlugin)
  await fastify.register(corsPlugin)

  await fastify.register(authPlugin, opts.announce !== undefined ? { announce: opts.announce } : {})
  await fastify.register(isolationPlugin)
  await fastify.register(storePlugin)
  await fastify.register(enginePlugin)
  await fastify.register(readModelPlugin)
  await fastify.register(ssePlugin)
  await fastify.register(startRunPlugin)
  await fastify.register(webhooksPlugin)
  await fastify.register(metricsPlugin)

  await fastify.register(healthRoutes)
  // Everything under /api, with its auth, rate limit, metrics and not-found handler.
  await fastify.register(apiRoutes, { prefix: '/api' })
  // OpenAI's wire format over the same runs, keys and limits, its errors in OpenAI's shape.
  await fastify.register(v1Routes, { prefix: '/v1' })
}

export default app
