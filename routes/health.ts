import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { HealthSchema } from '../src/schemas/health.js'
import { VERSION } from '../src/package-info.js'

/** `GET /health`: public, cheap (no process spawned), 503 only while shutting down. */
const health: FastifyPluginAsyncTypebox = async (fastify) => {
  const startedAt = Date.now()
  fastify.get('/health', {
    schema: {
      tags: ['system'],
      summary: 'Service health',
      description: '`healthy` when the Claude Code CLI is available and has a credential, runs can start it (`isolation.error` absent) and the run store answers, `degraded` (still 200) otherwise, 503 only while shutting down. Never spawns a process: the CLI probe is cached and refreshed in the background.',
      operationId: 'health',
      response: {
        200: { ...HealthSchema, description: 'The service is up (`healthy`, or `degraded` when the CLI or its credential is missing).' },
        503: { ...HealthSchema, description: 'The server is shutting down.' }
      }
    }
  }, async (_request, reply) => {
    const server = fastify.serverStatus
    const cli = server.cli()
    const store = server.storeAnswers()
    const cluster = server.cluster()
    const launchError = server.launchError()
    const status = server.shuttingDown() ? 'shutting_down' : cli.available && cli.credentials !== 'missing' && store && launchError === null ? 'healthy' : 'degraded'
    if (status === 'shutting_down') reply.code(503)
    return {
      status,
      version: VERSION,
      claude_code_available: cli.available,
      claude_code_version: cli.version,
      credentials: cli.credentials,
      store: store ? 'ok' : 'unavailable',
      isolation: { ...server.isolation, ...(launchError !== null ? { error: launchError } : {}) },
      limits: fastify.limits,
      uptime_s: Math.round((Date.now() - startedAt) / 100) / 10,
      runs: await server.runs(),
      warm: server.warm(),
      ...(cluster !== undefined ? { cluster } : {})
    } as const
  })
}

export default health
