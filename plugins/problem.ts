import fp from 'fastify-plugin'
import { STATUS_CODES } from 'node:http'
import { Ajv, type Options as AjvOptions } from 'ajv'
import addFormats from 'ajv-formats'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { ProblemSchema } from '../src/schemas/problem.js'
import { ExecuteResultSchema } from '../src/schemas/execute.js'
import { RunSchema } from '../src/schemas/runs.js'
import { ApprovalSchema } from '../src/schemas/interactive.js'
import { SessionSchema } from '../src/schemas/sessions.js'
import { DomainError } from '../src/domain/errors.js'

/** The HTTP status of each domain error: the domain says what happened, the API how to answer. */
export const STATUS_OF_CODE: Readonly<Record<string, number>> = {
  invalid_request: 400,
  working_directory_not_found: 400,
  unauthorized: 401,
  working_directory_forbidden: 403,
  working_directory_not_writable: 403,
  env_var_forbidden: 403,
  permission_mode_forbidden: 403,
  insufficient_scope: 403,
  webhook_host_forbidden: 403,
  session_forbidden: 403,
  mcp_server_forbidden: 403,
  run_not_found: 404,
  model_not_found: 404,
  approval_not_found: 404,
  approval_resolved: 409,
  run_finished: 409,
  session_not_found: 404,
  session_busy: 409,
  session_empty: 409,
  transcript_unreadable: 409,
  session_directory_mismatch: 409,
  path_forbidden: 403,
  path_not_found: 404,
  path_conflict: 409,
  precondition_failed: 412,
  upload_too_large: 413,
  range_not_satisfiable: 416,
  changed_since: 409,
  changes_not_recorded: 409,
  run_not_ended: 409,
  insufficient_storage: 507,
  capacity_exceeded: 429,
  rate_limited: 429,
  key_concurrency_exceeded: 429,
  budget_exceeded: 429,
  message_queue_full: 429,
  shutting_down: 503,
  store_unavailable: 503,
  agent_identity_unavailable: 503
}

/**
 * Shared schemas, strict validation, and one error path: every error leaves as RFC 9457 problem+json. Validation failures name each
 * offending field; 5xx never carry internal detail, only the request id to find them in the log.
 * Also owns request validation: bodies are validated strictly (no coercion, unknown fields
 * refused, not dropped); query strings and params are coerced from text.
 */
export default fp(async (fastify) => {
  // Shared named schemas are added here, once, at the app level: a route plugin that calls
  // addSchema gets Fastify's default validator rebuilt for it, silently undoing the strict one.
  fastify.addSchema(ProblemSchema)
  fastify.addSchema(ExecuteResultSchema)
  fastify.addSchema(RunSchema)
  fastify.addSchema(ApprovalSchema)
  fastify.addSchema(SessionSchema)

  const base: AjvOptions = { allErrors: true, removeAdditional: false, useDefaults: true, strict: false }
  const bodyAjv = addFormats.default(new Ajv({ ...base, coerceTypes: false }))
  const textAjv = addFormats.default(new Ajv({ ...base, coerceTypes: 'array' }))
  fastify.setValidatorCompiler(({ schema, httpPart }) =>
    (httpPart === 'body' ? bodyAjv : textAjv).compile(schema))

  fastify.setErrorHandler((err: FastifyError | DomainError, request, reply) => {
    if (err instanceof DomainError) {
      const status = STATUS_OF_CODE[err.code] ?? 500
      if (status >= 500 && err.code !== 'shutting_down' && err.code !== 'store_unavailable') request.log.error({ err }, 'request failed')
      if (err.retryAfter !== undefined) reply.header('retry-after', String(err.retryAfter))
      return sendProblem(request, reply, status, status === 500 ? 'internal_error' : err.code,
        status === 500 ? `Internal error; quote request_id ${request.id} to find it in the server log` : err.message, status === 500 ? undefined : err.problem)
    }
    if (err.validation !== undefined) {
      // A bad property name is reported twice by Ajv (propertyNames and its inner pattern): keep one.
      const errors = err.validation.filter(v => !(v.keyword === 'pattern' && (v as { propertyName?: string }).propertyName !== undefined)).map(v => {
        const params = v.params as Record<string, unknown>
        let path = v.instancePath
        let message = v.message ?? 'is invalid'
        if (v.keyword === 'additionalProperties') {
          path = `${path}/${String(params.additionalProperty)}`
          message = 'is not a known field'
        } else if (v.keyword === 'propertyNames') {
          path = `${path}/${String(params.propertyName)}`
          message = 'is not a valid name'
        } else if (v.keyword === 'required') {
          path = `${path}/${String(params.missingProperty)}`
          message = 'is required'
        }
        return { path: path === '' ? '/' : path, message }
      })
      const detail = errors.map(e => `${e.path} ${e.message}`).join('; ')
      return sendProblem(request, reply, 400, 'invalid_request', `Invalid request ${err.validationContext ?? ''}: ${detail}`.replace('  ', ' '), { errors })
    }
    const status = err.statusCode ?? 500
    if (status >= 500) {
      request.log.error({ err }, 'request failed')
      return sendProblem(request, reply, status, 'internal_error', `Internal error; quote request_id ${request.id} to find it in the server log`)
    }
    return sendProblem(request, reply, status, problemCode(err, status), err.message)
  })

  fastify.setNotFoundHandler((request, reply) =>
    sendProblem(request, reply, 404, 'not_found', `No route ${request.method} ${request.url.split('?')[0]}`))
}, { name: 'problem' })

/** Map Fastify's own error codes to ours (domain errors carry theirs). */
function problemCode (err: FastifyError, status: number): string {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE': return 'payload_too_large'
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': return 'unsupported_media_type'
    case 'FST_ERR_CTP_EMPTY_JSON_BODY': return 'invalid_request'
    case 'FST_ERR_CTP_INVALID_JSON_BODY': return 'malformed_json'
  }
  if (err instanceof SyntaxError) return 'malformed_json'
  return status === 400 ? 'invalid_request' : (STATUS_CODES[status] ?? 'error').toLowerCase().replace(/\W+/g, '_')
}

/** Send a problem+json response. */
export function sendProblem (request: FastifyRequest, reply: FastifyReply, status: number, code: string, detail: string, extra?: Record<string, unknown>): FastifyReply {
  return reply
    .code(status)
    .type('application/problem+json; charset=utf-8')
    .send({ type: 'about:blank', title: STATUS_CODES[status] ?? 'Error', status, detail, code, request_id: request.id, ...extra })
}
