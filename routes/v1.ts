import type { FastifyPluginAsync, FastifyReply } from 'fastify'
import { rateLimit } from '../plugins/auth.js'
import { sendProblem } from '../plugins/problem.js'
import { errorType } from '../src/openai/chat.js'
import chatRoutes from './v1-chat.js'
import responsesRoutes from './v1-responses.js'

/** OpenAI's `code` for ours, where OpenAI has one of its own. */
const CODES: Record<string, string> = {
  unauthorized: 'invalid_api_key',
  rate_limited: 'rate_limit_exceeded',
  capacity_exceeded: 'rate_limit_exceeded',
  key_concurrency_exceeded: 'rate_limit_exceeded',
  budget_exceeded: 'insufficient_quota',
  invalid_request: 'invalid_request_error'
}

/** `/messages/0/content` (a JSON pointer) as OpenAI names a parameter: `messages[0].content`. */
export function paramOf (pointer: string): string {
  return pointer.replace(/^\//, '').split('/').filter(Boolean).map(p => /^\d+$/.test(p) ? `[${p}]` : `.${p}`).join('').replace(/^\./, '')
}

/**
 * The `/v1` scope: OpenAI's wire format over the server's own runs, keys and limits. The same key
 * check, rate limit, metrics and wait for recovery as `/api`; every error leaves in OpenAI's shape
 * (`{ error: { message, type, param, code } }`), which the official clients raise as their typed
 * errors: the problem+json the rest of the server answers with is rewritten on its way out.
 */
const v1: FastifyPluginAsync = async (fastify) => {
  fastify.addHook('onRequest', async () => {
    if (fastify.server.listening) await fastify.engine.recovered()
  })
  if (fastify.authenticate !== undefined) fastify.addHook('onRequest', fastify.authenticate)
  if (fastify.rateLimitOptions !== undefined) await fastify.register(rateLimit, fastify.rateLimitOptions)
  fastify.addHook('onResponse', fastify.observeHttp)
  // Before serialization, so the response schemas (OpenAI's error) describe what is sent.
  fastify.addHook('preSerialization', async (_request, reply: FastifyReply, payload: unknown) => {
    const type = String(reply.getHeader('content-type') ?? '')
    if (!type.startsWith('application/problem+json') || payload === null || typeof payload !== 'object') return payload
    const p = payload as { status?: number, detail?: string, code?: string, param?: string, errors?: Array<{ path?: string }> }
    const status = p.status ?? reply.statusCode
    const param = p.param ?? (p.errors?.[0]?.path !== undefined ? paramOf(p.errors[0].path) : null)
    reply.header('content-type', 'application/json; charset=utf-8')
    return { error: { message: p.detail ?? 'error', type: errorType(status), param: param === '' ? null : param, code: CODES[p.code ?? ''] ?? p.code ?? null } }
  })
  fastify.setNotFoundHandler((request, reply) =>
    sendProblem(request, reply, 404, 'not_found', `No route ${request.method} ${request.url.split('?')[0]}`))
  await fastify.register(chatRoutes)
  await fastify.register(responsesRoutes)
}

export default v1
