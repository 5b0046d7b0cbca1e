import fp from 'fastify-plugin'
import { STATUS_CODES } from 'node:http'
import { Ajv, type Options as AjvOptions } from 'ajv'
import addFormats from 'ajv-formats'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { ProblemSchema } from '../src/schemas/problem.js'
import { ExecuteResultSchema } from '../src/schemas/execute.js'
import { RunSchema } from '../src/schemas/runs.js'
import { PROBLEM_CODES, type ProblemError } from '../src/errors.js'

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

  const base: AjvOptions = { allErrors: true, removeAdditional: false, useDefaults: true, strict: false }
  const bodyAjv = addFormats.default(new Ajv({ ...base, coerceTypes: false }))
  const textAjv = addFormats.default(new Ajv({ ...base, coerceTypes: 'array' }))
  fastify.setValidatorCompiler(({ schema, httpPart }) =>
    (httpPart === 'body' ? bodyAjv : textAjv).compile(schema))

  fastify.setErrorHandler((err: FastifyError & Partial<ProblemError>, request, reply) => {
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
      return sendProblem(request, reply, status, status === 503 && err.code === 'SHUTTING_DOWN' ? 'shutting_down' : 'internal_error',
        status === 503 && err.code === 'SHUTTING_DOWN' ? err.message : `Internal error; quote request_id ${request.id} to find it in the server log`)
    }
    if (err.retryAfter !== undefined) reply.header('retry-after', String(err.retryAfter))
    return sendProblem(request, reply, status, problemCode(err, status), err.message, err.problem)
  })

  fastify.setNotFoundHandler({
    // Unknown /api paths ask for a key like known ones: without it, a 404 would reveal what exists.
    preHandler: (request, reply, done) => {
      if (request.url.startsWith('/api/') && fastify.authenticate !== undefined) fastify.authenticate(request, reply, done)
      else done()
    }
  }, (request, reply) =>
    sendProblem(request, reply, 404, 'not_found', `No route ${request.method} ${request.url.split('?')[0]}`))
}, { name: 'problem' })

/** Map Fastify's own error codes to ours; our typed errors already carry snake_case codes. */
function problemCode (err: FastifyError, status: number): string {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE': return 'payload_too_large'
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': return 'unsupported_media_type'
    case 'FST_ERR_CTP_EMPTY_JSON_BODY': return 'invalid_request'
    case 'FST_ERR_CTP_INVALID_JSON_BODY': return 'malformed_json'
  }
  if (err instanceof SyntaxError) return 'malformed_json'
  if (typeof err.code === 'string' && PROBLEM_CODES.has(err.code)) return err.code.toLowerCase()
  return status === 400 ? 'invalid_request' : (STATUS_CODES[status] ?? 'error').toLowerCase().replace(/\W+/g, '_')
}

/** Send a problem+json response. */
export function sendProblem (request: FastifyRequest, reply: FastifyReply, status: number, code: string, detail: string, extra?: Record<string, unknown>): FastifyReply {
  return reply
    .code(status)
    .type('application/problem+json; charset=utf-8')
    .send({ type: 'about:blank', title: STATUS_CODES[status] ?? 'Error', status, detail, code, request_id: request.id, ...extra })
}
