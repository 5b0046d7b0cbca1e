import createError from '@fastify/error'

/**
 * Typed errors of the domain. Each carries the HTTP status and the problem `code` the contract
 * names; the app's one error handler turns them into problem+json. The domain throws them without
 * knowing about HTTP beyond the status number.
 */
/** Our problem codes; `@fastify/error` upper-cases codes, the problem body carries them lower-case. */
export const PROBLEM_CODES = new Set<string>()
const problem = (code: string, status: number) => {
  PROBLEM_CODES.add(code.toUpperCase())
  return createError(code, '%s', status)
}

export const InvalidRequest = problem('invalid_request', 400)
export const WorkingDirectoryNotFound = problem('working_directory_not_found', 400)
export const WorkingDirectoryForbidden = problem('working_directory_forbidden', 403)
export const EnvVarForbidden = problem('env_var_forbidden', 403)
export const PermissionModeForbidden = problem('permission_mode_forbidden', 403)
export const RunNotFound = problem('run_not_found', 404)
export const SessionDirectoryMismatch = problem('session_directory_mismatch', 409)
export const CapacityExceeded = problem('capacity_exceeded', 429)
export const ShuttingDown = problem('shutting_down', 503)
export const Unauthorized = problem('unauthorized', 401)
export const InsufficientScope = problem('insufficient_scope', 403)
export const RateLimited = problem('rate_limited', 429)
export const KeyConcurrencyExceeded = problem('key_concurrency_exceeded', 429)
export const BudgetExceeded = problem('budget_exceeded', 429)
export const WebhookHostForbidden = problem('webhook_host_forbidden', 403)
export const SessionForbidden = problem('session_forbidden', 403)

/** A domain error with a problem code and status, as created above. */
export interface ProblemError extends Error {
  code: string
  statusCode: number
  /** Extra members for the problem body (e.g. `errors`). */
  problem?: Record<string, unknown>
  /** Seconds for `Retry-After`. */
  retryAfter?: number
}

/** Attach extra members to a typed error before throwing it. */
export function withProblem<E extends Error> (err: E, extra: { problem?: Record<string, unknown>, retryAfter?: number }): E {
  return Object.assign(err, extra)
}
