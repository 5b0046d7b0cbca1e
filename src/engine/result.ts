import type { ChangeCounts } from '../workspace/snapshots.js'
import type { ErrorCode, RunResult, RunStatus } from '../domain/run.js'
import type { LimitName, ResourceUsage, RunLimits } from '../domain/limits.js'

/** The CLI's final `result` line, as far as the server reads it; other members pass through. */
export interface CliResultLine {
  type: 'result'
  subtype?: string
  is_error?: boolean
  api_error_status?: number | null
  duration_ms?: number
  num_turns?: number
  result?: string
  session_id?: string
  total_cost_usd?: number
  usage?: Record<string, unknown>
  permission_denials?: Array<Record<string, unknown>>
  structured_output?: unknown
  errors?: string[]
}

/** Everything known about a run when it has ended. */
export interface RunOutcome {
  runId: string
  sessionId: string
  timeoutS: number
  exitCode: number | null
  /** Why the server ended the run, if it did. */
  ended?: { by: 'timeout' } | { by: 'cancel', reason: string }
  /** An interrupt the CLI did not honour in time ended it by a tree kill. */
  interruptKilled?: boolean
  spawnError?: { code?: string, message: string }
  /** The run was refused when its turn came (its directory no longer passes the policy). */
  refused?: { code: ErrorCode, message: string }
  /** Cluster mode: its claim lapsed before it started; another instance runs it (nothing is written here). */
  abandoned?: boolean
  resultLine?: CliResultLine
  stderrTail: string
  /** Lines dropped because they exceeded the line cap. */
  oversizeLines: number
  /** The result line was over the line cap and had its strings cut. */
  resultShrunk?: boolean
  startedAt: number
  endedAt: number
  maxOutputBytes: number
  /** The answer's text as streamed so far: the output of a run that ended without a result. */
  partialText?: string
  /** The resource limit its tree hit (it was ended for it), and the limits it had. */
  limit?: LimitName
  limits?: RunLimits
  /** What its tree used, where it had a control group. */
  resources?: ResourceUsage
  /** How many files it added, modified and deleted in its working directory (where recorded). */
  changes?: ChangeCounts | undefined
}

/**
 * The assistant's text as it streams, kept up to the output cap, so a run that is cancelled,
 * times out or dies before its result still answers with what it had written. Separate text
 * blocks are joined by a blank line; deltas of one block are joined as they come.
 */
export class PartialText {
  private parts: string[] = []
  private bytes = 0
  private full = false
  private nextIsNewBlock = false

  constructor (private readonly maxBytes: number) {}

  /** The next piece of text starts a new block (a new `content_block_start`). */
  newBlock (): void {
    this.nextIsNewBlock = true
  }

  /** Add `text`; `block` says it is a whole block of its own. */
  add (text: string, block = false): void {
    if (this.full || text === '') return
    const piece = (block || this.nextIsNewBlock) && this.bytes > 0 ? '\n\n' + text : text
    this.nextIsNewBlock = false
    const room = this.maxBytes - this.bytes
    const { text: kept, truncated } = capUtf8(piece, room)
    this.parts.push(kept)
    this.bytes += Buffer.byteLength(kept)
    if (truncated) this.full = true
  }

  get text (): string {
    if (this.parts.length > 1) this.parts = [this.parts.join('')]
    return this.parts[0] ?? ''
  }

  get truncated (): boolean {
    return this.full
  }
}

/** Cut a string to at most `maxBytes` of UTF-8 without splitting a character. */
export function capUtf8 (s: string, maxBytes: number): { text: string, truncated: boolean } {
  // A UTF-16 unit is at most 3 bytes of UTF-8 (4 for a surrogate pair, which is 2 units).
  if (s.length * 3 <= maxBytes || Buffer.byteLength(s) <= maxBytes) return { text: s, truncated: false }
  const buf = Buffer.from(s)
  // Cut at a character boundary: back up while the first byte left out continues a character (10xxxxxx).
  let end = maxBytes
  while (end > 0 && (buf[end]! & 0xc0) === 0x80) end--
  return { text: buf.subarray(0, end).toString('utf8'), truncated: true }
}

const tail = (s: string): string => {
  const t = s.trim()
  return t.length > 0 ? ` (stderr: ${t.slice(-500)})` : ''
}

function classify (o: RunOutcome): { status: RunStatus, errorCode: ErrorCode | null, error: string | null } {
  const r = o.resultLine
  if (o.ended?.by === 'timeout') {
    return { status: 'timed_out', errorCode: 'timeout', error: `Execution timed out after ${o.timeoutS} seconds` }
  }
  if (o.ended?.by === 'cancel') {
    return { status: 'cancelled', errorCode: 'cancelled', error: `Run cancelled: ${o.ended.reason}` }
  }
  if (o.refused !== undefined) return { status: 'failed', errorCode: o.refused.code, error: o.refused.message }
  if (o.limit !== undefined) return { status: 'failed', errorCode: 'resource_limit', error: limitMessage(o.limit, o.limits) }
  if (o.spawnError !== undefined) {
    if (o.spawnError.code === 'ENOENT' || o.spawnError.code === 'EACCES') {
      return { status: 'failed', errorCode: 'cli_not_found', error: `Claude Code CLI could not be started: ${o.spawnError.message}` }
    }
    return { status: 'failed', errorCode: 'cli_error', error: `Claude Code CLI failed to start: ${o.spawnError.message}` }
  }
  if (r === undefined) {
    const over = o.oversizeLines > 0 ? `; ${o.oversizeLines} output line(s) exceeded MAX_LINE_BYTES and were dropped` : ''
    return { status: 'failed', errorCode: 'cli_error', error: `Claude Code exited with code ${o.exitCode ?? 'unknown'} without a result${over}${tail(o.stderrTail)}` }
  }
  if (r.is_error !== true && o.exitCode === 0 && (r.subtype === undefined || r.subtype === 'success')) {
    return { status: 'succeeded', errorCode: null, error: null }
  }
  const text = (r.result ?? '').trim()
  const errors = (r.errors ?? []).join('; ')
  switch (r.subtype) {
    case 'error_max_turns':
      return { status: 'failed', errorCode: 'max_turns', error: errors || 'Reached the maximum number of turns' }
    case 'error_max_budget_usd':
      return { status: 'failed', errorCode: 'max_budget', error: errors || 'Reached the maximum budget' }
    case 'error_during_execution':
      if (/no conversation found/i.test(errors)) return { status: 'failed', errorCode: 'session_not_found', error: errors }
      return { status: 'failed', errorCode: 'cli_error', error: (errors || 'Error during execution') + tail(o.stderrTail) }
  }
  if (r.subtype !== undefined && r.subtype !== 'success') {
    return { status: 'failed', errorCode: 'cli_error', error: errors || `Claude Code ended with ${r.subtype}` }
  }
  if (typeof r.api_error_status === 'number') {
    return { status: 'failed', errorCode: 'api_error', error: text || `The model API answered ${r.api_error_status}` }
  }
  if (/not logged in|\/login|invalid api key|no api key/i.test(text)) {
    return { status: 'failed', errorCode: 'not_authenticated', error: `${text} (set ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN in the server's environment)` }
  }
  if (/^api error/i.test(text)) return { status: 'failed', errorCode: 'api_error', error: text }
  return { status: 'failed', errorCode: 'cli_error', error: (text || `Claude Code exited with code ${o.exitCode ?? 'unknown'}`) + tail(o.stderrTail) }
}

/** Map a finished run to the contract's result object. */
export function toRunResult (o: RunOutcome): RunResult {
  const r = o.resultLine
  const { status, errorCode, error } = classify(o)
  // Without a result text (cancelled, timed out, interrupted, died), the text streamed so far.
  const { text, truncated } = capUtf8(typeof r?.result === 'string' ? r.result : o.partialText ?? '', o.maxOutputBytes)
  const apiStatus = typeof r?.api_error_status === 'number' ? r.api_error_status : null
  return {
    success: status === 'succeeded',
    output: text,
    error,
    exit_code: o.exitCode,
    execution_time: Math.round(o.endedAt - o.startedAt) / 1000,
    timestamp: new Date(o.endedAt).toISOString(),
    run_id: o.runId,
    session_id: r?.session_id ?? o.sessionId,
    status,
    error_code: errorCode,
    api_error_status: errorCode === 'api_error' ? apiStatus : null,
    num_turns: r?.num_turns ?? null,
    total_cost_usd: r?.total_cost_usd ?? null,
    usage: (r?.usage as RunResult['usage']) ?? null,
    duration_ms: r?.duration_ms ?? null,
    permission_denials: r?.permission_denials ?? [],
    structured_output: r?.structured_output ?? null,
    truncated: truncated || o.resultShrunk === true,
    ...(o.limit !== undefined && errorCode === 'resource_limit' ? { limit: o.limit } : {}),
    ...(o.resources !== undefined ? { resources: o.resources } : {}),
    ...(o.changes !== undefined ? { changes: o.changes } : {})
  }
}

const mib = (b: number): string => b >= 1024 ** 3 && b % (1024 ** 3) === 0 ? `${b / 1024 ** 3} GiB` : `${Math.round(b / 1024 ** 2)} MiB`

/** One sentence on the limit a run hit, with its value. */
function limitMessage (limit: LimitName, limits: RunLimits | undefined): string {
  switch (limit) {
    case 'memory': return `The run's processes needed more memory than its limit${limits?.memoryMax !== undefined ? ` (${mib(limits.memoryMax)})` : ''} and were ended (RUN_MEMORY_MAX, or the key's memory_max)`
    case 'pids': return `The run's processes reached their limit of ${limits?.pidsMax ?? 'the allowed'} processes and threads and were ended (RUN_PIDS_MAX, or the key's pids_max)`
    case 'disk': return `The run wrote more than its disk limit${limits?.diskMax !== undefined ? ` (${mib(limits.diskMax)})` : ''} and was ended (RUN_DISK_MAX, or the key's disk_max)`
    case 'cpu': return 'The run exceeded its CPU limit and was ended'
  }
}
