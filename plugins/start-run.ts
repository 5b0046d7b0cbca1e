import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { RunRequest } from '../src/domain/run.js'
import { checkMcpServers, checkWebhookUrl } from '../src/engine/policy.js'

/** A run as `submit` hands it back: live here, or on another instance of the cluster. */
type SubmittedRun = Awaited<ReturnType<FastifyInstance['engine']['submit']>>

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Start a run on behalf of the request's key: request policy (webhook host, directory,
     * environment, permission mode, session), then admission with the key's limits, in the engine.
     */
    startRun: (request: FastifyRequest, body: RunRequest, cancelOnDisconnect: boolean) => Promise<SubmittedRun>
  }
}

/** The one way the API starts runs, shared by `/api/execute`, `/api/execute/stream` and `POST /api/runs`. */
export default fp(async (fastify) => {
  const { engine, config } = fastify
  fastify.decorate('startRun', async (request: FastifyRequest, body: RunRequest, cancelOnDisconnect: boolean) => {
    checkWebhookUrl(body.webhook_url, config.webhookAllowedHosts)
    checkMcpServers(body.mcp_servers, config.mcpServers, config.mcpAllowedHosts, request.apiKey?.mcpServers)
    const spec = await engine.prepare(body, request.apiKeyName, request.apiKey === null || fastify.isAdmin(request))
    const k = request.apiKey
    const key = k === null
      ? null
      : {
          name: k.name,
          anySession: fastify.isAdmin(request),
          ...(k.maxConcurrentRuns !== undefined ? { maxConcurrentRuns: k.maxConcurrentRuns } : {}),
          ...(k.dailyBudgetUsd !== undefined ? { dailyBudgetUsd: k.dailyBudgetUsd } : {}),
          ...(k.limits !== undefined ? { runLimits: k.limits } : {})
        }
    const handle = await engine.submit(spec, { request: body, key, cancelOnDisconnect, requestId: request.id })
    // A client that left while its run was being set up never hears of it: end the run now.
    if (cancelOnDisconnect && request.raw.socket?.destroyed === true) handle.cancel('client disconnected')
    return handle
  })
}, { name: 'start-run', dependencies: ['config', 'auth', 'engine'] })
