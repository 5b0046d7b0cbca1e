/**
 * Errors of the domain: each says what happened, with a stable snake_case `code` (the `code` of
 * the problem response) and, where it helps, the fields at fault (`problem.errors`) and when to
 * retry. They know nothing of HTTP: the API's error handler (`plugins/problem.ts`) decides the
 * status for each code.
 */
export class DomainError extends Error {
  /** Stable, snake_case: what clients switch on. */
  readonly code: string
  /** Extra members for the problem body (e.g. `errors`, `spent_usd`). */
  problem?: Record<string, unknown>
  /** Seconds after which a retry may succeed. */
  retryAfter?: number

  constructor (code: string, message: string) {
    super(message)
    this.code = code
    this.name = code
  }
}

/** A class per code, so callers throw `new WorkingDirectoryForbidden(...)` and tests match on it. */
const kind = (code: string) => class extends DomainError {
  static readonly code = code
  constructor (message: string) { super(code, message) }
}

export const InvalidRequest = kind('invalid_request')
export const WorkingDirectoryNotFound = kind('working_directory_not_found')
export const WorkingDirectoryForbidden = kind('working_directory_forbidden')
export const WorkingDirectoryNotWritable = kind('working_directory_not_writable')
export const EnvVarForbidden = kind('env_var_forbidden')
export const PermissionModeForbidden = kind('permission_mode_forbidden')
export const RunNotFound = kind('run_not_found')
export const SessionDirectoryMismatch = kind('session_directory_mismatch')
export const CapacityExceeded = kind('capacity_exceeded')
export const ShuttingDown = kind('shutting_down')
export const Unauthorized = kind('unauthorized')
export const InsufficientScope = kind('insufficient_scope')
export const RateLimited = kind('rate_limited')
export const KeyConcurrencyExceeded = kind('key_concurrency_exceeded')
export const BudgetExceeded = kind('budget_exceeded')
export const WebhookHostForbidden = kind('webhook_host_forbidden')
export const SessionForbidden = kind('session_forbidden')
/** An MCP server the key may not use, or an inline one on a host the operator does not allow. */
export const McpServerForbidden = kind('mcp_server_forbidden')
export const StoreUnavailable = kind('store_unavailable')
export const ApprovalNotFound = kind('approval_not_found')
export const ApprovalResolved = kind('approval_resolved')
export const RunFinished = kind('run_finished')
export const MessageQueueFull = kind('message_queue_full')
export const SessionNotFound = kind('session_not_found')
export const SessionBusy = kind('session_busy')
export const SessionEmpty = kind('session_empty')
export const TranscriptUnreadable = kind('transcript_unreadable')
/** No uid can be had for a key's agent identity, or the one it has is no longer its own. */
export const AgentIdentityUnavailable = kind('agent_identity_unavailable')

/** Attach extra members to an error before throwing it. */
export function withProblem<E extends DomainError> (err: E, extra: { problem?: Record<string, unknown>, retryAfter?: number }): E {
  return Object.assign(err, extra)
}
