import fp from 'fastify-plugin'
import type { FastifyRequest } from 'fastify'
import type { RunHandle } from '../src/runner/runner.js'
import type { ExecuteRequest } from '../src/schemas/execute.js'
import { BudgetExceeded, InvalidRequest, KeyConcurrencyExceeded, SessionForbidden, WebhookHostForbidden, withProblem } from '../src/errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Check what a key may start before its run is accepted: its concurrency and daily spend
     * (429), the webhook host and the session's owner (403).
     */
    checkAdmission: (request: FastifyRequest, body: { session_id?: string, webhook_url?: string }) => void
    /** Check a request's admission and policy, then submit its run on behalf of its key. */
    startRun: (request: FastifyRequest, body: ExecuteRequest, cancelOnDisconnect: boolean) => Promise<RunHandle>
  }
}

/** The start of the current UTC day, and seconds until the next one. */
function utcDay (now = Date.now()): { start: number, secondsLeft: number } {
  const d = new Date(now)
  const start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate())
  return { start, secondsLeft: Math.ceil((start + 86_400_000 - now) / 1000) }
}

/** Per-key limits and request policies that need the run store. */
export default fp(async (fastify) => {
  const { runner, config } = fastify
  fastify.decorate('checkAdmission', (request: FastifyRequest, body: { session_id?: string, webhook_url?: string }) => {
    if (body.webhook_url !== undefined) {
      let url: URL
      try {
        url = new URL(body.webhook_url)
      } catch {
        throw withProblem(new InvalidRequest('webhook_url is not a valid URL'), { problem: { errors: [{ path: '/webhook_url', message: 'is not a valid URL' }] } })
      }
      const host = url.host.toLowerCase()
      const hostname = url.hostname.toLowerCase()
      if (!config.webhookAllowedHosts.includes(host) && !config.webhookAllowedHosts.includes(hostname)) {
        throw withProblem(new WebhookHostForbidden(config.webhookAllowedHosts.length === 0
          ? 'webhooks are not enabled on this server (WEBHOOK_ALLOWED_HOSTS is empty)'
          : `webhook_url host ${host} is not allowed; allowed: ${config.webhookAllowedHosts.join(', ')}`), {
          problem: { errors: [{ path: '/webhook_url', message: 'host not allowed' }] }
        })
      }
    }
    const key = request.apiKey
    if (key === null) return
    if (body.session_id !== undefined && !fastify.isAdmin(request)) {
      const owner = runner.store.sessionOwner(body.session_id.toLowerCase())
      if (owner !== undefined && owner !== key.name) throw new SessionForbidden(`session ${body.session_id} belongs to another key`)
    }
    if (key.maxConcurrentRuns !== undefined) {
      const live = runner.liveRunsOf(key.name)
      if (live >= key.maxConcurrentRuns) {
        throw withProblem(new KeyConcurrencyExceeded(`the key ${key.name} has ${live} runs queued or running, its limit (max_concurrent_runs=${key.maxConcurrentRuns}); retry when one has ended`), { retryAfter: 5 })
      }
    }
    if (key.dailyBudgetUsd !== undefined) {
      const day = utcDay()
      const spent = runner.store.costSince(key.name, day.start)
      if (spent >= key.dailyBudgetUsd) {
        throw withProblem(new BudgetExceeded(`the key ${key.name} has spent $${spent.toFixed(4)} today (UTC), its daily budget of $${key.dailyBudgetUsd}; it resets at midnight UTC`), {
          retryAfter: day.secondsLeft,
          problem: { spent_usd: spent, daily_budget_usd: key.dailyBudgetUsd }
        })
      }
    }
  })
  fastify.decorate('startRun', async (request: FastifyRequest, body: ExecuteRequest, cancelOnDisconnect: boolean) => {
    fastify.checkAdmission(request, body)
    const spec = await runner.prepare(body)
    return runner.submit(spec, { request: body, keyName: request.apiKeyName, cancelOnDisconnect, requestId: request.id })
  })
}, { name: 'quotas', dependencies: ['config', 'auth', 'runner'] })
