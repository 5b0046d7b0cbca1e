import fp from 'fastify-plugin'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { createHash, timingSafeEqual } from 'node:crypto'
import { presentedKey } from './auth.js'
import { sendProblem } from './problem.js'
import { Type } from '@sinclair/typebox'
import { problemResponses } from '../src/schemas/problem.js'

const digest = (s: string): Buffer => createHash('sha256').update(s).digest()

declare module 'fastify' {
  interface FastifyInstance {
    /** An onResponse hook counting HTTP requests by route and status (for the API scope). */
    observeHttp: (request: FastifyRequest, reply: FastifyReply, done: () => void) => void
  }
}

/**
 * Prometheus metrics at `/metrics`: runs started and finished by status and key, run durations,
 * queue length and active CLIs, cost and tokens by key, and HTTP requests by route. Readable with
 * an admin key or with `METRICS_TOKEN` (as a bearer token), so a scraper needs no run rights.
 */
export default fp(async (fastify) => {
  const { engine, serverStatus, config } = fastify
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'ccapi_process_' })
  const key = (k: string | null): string => k ?? 'none'

  const started = new Counter({ name: 'ccapi_runs_started_total', help: 'Runs whose CLI was started', labelNames: ['key'], registers: [registry] })
  const finished = new Counter({ name: 'ccapi_runs_finished_total', help: 'Runs that ended, by status', labelNames: ['status', 'key'], registers: [registry] })
  const duration = new Histogram({
    name: 'ccapi_run_duration_seconds',
    help: 'Wall time of runs from submission to end',
    labelNames: ['status'],
    buckets: [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600],
    registers: [registry]
  })
  const cost = new Counter({ name: 'ccapi_cost_usd_total', help: 'What runs cost, as the CLI reports it', labelNames: ['key'], registers: [registry] })
  const tokens = new Counter({ name: 'ccapi_tokens_total', help: 'Tokens used by runs', labelNames: ['key', 'type'], registers: [registry] })
  // eslint-disable-next-line no-new
  new Gauge({ name: 'ccapi_runs_queued', help: 'Runs waiting for a slot', registers: [registry], async collect () { this.set((await serverStatus.runs()).queued) } })
  // eslint-disable-next-line no-new
  new Gauge({ name: 'ccapi_runs_active', help: 'Claude Code CLIs running now', registers: [registry], async collect () { this.set((await serverStatus.runs()).active) } })
  // eslint-disable-next-line no-new
  new Gauge({ name: 'ccapi_claude_code_available', help: '1 when the CLI probe succeeds', registers: [registry], collect () { this.set(serverStatus.cli().available ? 1 : 0) } })
  // eslint-disable-next-line no-new
  new Gauge({ name: 'ccapi_warm_spares_parked', help: 'Warm spares (parked CLIs) ready for new sessions', registers: [registry], collect () { this.set(serverStatus.warm().parked) } })
  const cluster = serverStatus.cluster()
  if (cluster !== undefined) {
    // Every instance serves its own /metrics: this names the instance, and what it sees of the cluster.
    new Gauge({ name: 'ccapi_instance_info', help: 'This server instance (cluster mode)', labelNames: ['instance_id'], registers: [registry] }).set({ instance_id: cluster.instance_id }, 1)
    // eslint-disable-next-line no-new
    new Gauge({ name: 'ccapi_cluster_instances', help: 'Instances sharing the database that heartbeat lately, this one included', registers: [registry], collect () { this.set(serverStatus.cluster()?.instances ?? 0) } })
  }
  const limited = new Counter({ name: 'ccapi_runs_limited_total', help: 'Runs ended because their process tree hit a resource limit, by limit', labelNames: ['limit', 'key'], registers: [registry] })
  const peakMemory = new Histogram({
    name: 'ccapi_run_peak_memory_bytes',
    help: 'The most memory a run\'s process tree held (where runs have control groups)',
    buckets: [64, 128, 256, 512, 1024, 2048, 4096, 8192].map(m => m * 1024 * 1024),
    registers: [registry]
  })
  const warm = new Counter({ name: 'ccapi_warm_claims_total', help: 'Runs by how they started warm: a new session on a warm spare (hit), cold for want of one (miss), cold after the spare refused (refused); a session\'s next run on the CLI kept from its last (kept)', labelNames: ['outcome'], registers: [registry] })
  for (const outcome of ['hit', 'miss', 'refused', 'kept']) warm.inc({ outcome }, 0)
  const http = new Counter({ name: 'ccapi_http_requests_total', help: 'HTTP requests by route and status', labelNames: ['method', 'route', 'status'], registers: [registry] })
  const httpDuration = new Histogram({
    name: 'ccapi_http_request_duration_seconds',
    help: 'HTTP response time by route (streams: until the stream ends)',
    labelNames: ['method', 'route'],
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300],
    registers: [registry]
  })

  engine.on('started', handle => started.inc({ key: key(handle.keyName) }))
  engine.on('warm', outcome => warm.inc({ outcome }))
  engine.on('finished', (handle, result) => {
    const k = key(handle.keyName)
    finished.inc({ status: result.status, key: k })
    duration.observe({ status: result.status }, result.execution_time)
    if (typeof result.total_cost_usd === 'number') cost.inc({ key: k }, result.total_cost_usd)
    if (result.limit !== undefined) limited.inc({ limit: result.limit, key: k })
    const peak = result.resources?.peak_memory_bytes
    if (typeof peak === 'number') peakMemory.observe(peak)
    const usage = result.usage ?? {}
    for (const type of ['input_tokens', 'output_tokens', 'cache_creation_input_tokens', 'cache_read_input_tokens'] as const) {
      const n = usage[type]
      if (typeof n === 'number' && n > 0) tokens.inc({ key: k, type: type.replace('_tokens', '') }, n)
    }
  })

  // Used by the API scope only (routes/api.ts): health checks and scrapes would drown the API's
  // own traffic, and pay for it on every probe.
  fastify.decorate('observeHttp', (request: FastifyRequest, reply: FastifyReply, done: () => void): void => {
    const route = request.routeOptions.url ?? 'unmatched'
    http.inc({ method: request.method, route, status: String(reply.statusCode) })
    httpDuration.observe({ method: request.method, route }, reply.elapsedTime / 1000)
    done()
  })

  const token = config.metricsToken !== undefined ? digest(config.metricsToken) : undefined
  fastify.get('/metrics', {
    schema: {
      tags: ['system'],
      summary: 'Prometheus metrics',
      description: 'Metrics in the Prometheus text format: runs by status and error code, run durations, queue depth, active runs, HTTP requests by route and status, webhook deliveries, and the process\'s own (CPU, memory, event loop). Needs `Authorization: Bearer <METRICS_TOKEN>` or an admin key (none with `ENABLE_AUTH=false`).',
      operationId: 'metrics',
      security: [{ BearerAuth: [] }, { ApiKeyAuth: [] }],
      response: {
        200: { description: 'The metrics.', content: { 'text/plain': { schema: Type.String() } } },
        401: problemResponses[401]
      }
    }
  }, async (request, reply) => {
    if (config.enableAuth) {
      const presented = presentedKey(request.headers)
      const byToken = token !== undefined && presented !== undefined && timingSafeEqual(digest(presented), token)
      if (!byToken) {
        const k = presented === undefined ? undefined : fastify.keyRing?.match(presented)
        if (k === undefined || !k.scopes.has('admin')) {
          reply.header('www-authenticate', 'Bearer realm="claude-code-api-metrics"')
          return sendProblem(request, reply, 401, 'unauthorized', 'metrics need METRICS_TOKEN or an admin key')
        }
      }
    }
    return reply.type(registry.contentType).send(await registry.metrics())
  })
}, { name: 'metrics', dependencies: ['config', 'auth', 'engine', 'read-model'] })
