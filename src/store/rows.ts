import type { RunStatus } from '../domain/run.js'
import type { NewRun, NewSession, PendingWebhook, RunRecord, SessionRecord, StoredEvent, WebhookDelivery } from '../domain/records.js'

/**
 * The rows of the SQL backends (SQLite, PostgreSQL) and how they map to the store's records: one
 * schema, so one mapping. Where the engines differ (SQLite has no booleans), both forms are read.
 */

export interface RunRow {
  id: string
  rowid: number
  status: RunStatus
  session_id: string
  working_directory: string
  request: string
  spec: string | null
  key_name: string | null
  cancel_on_disconnect: number | boolean
  marker: string | null
  owner: string | null
  lease_until: number | null
  created_at: number
  started_at: number | null
  ended_at: number | null
  result: string | null
}

export const toRecord = (r: RunRow): RunRecord => ({
  id: r.id,
  rowid: r.rowid,
  status: r.status,
  sessionId: r.session_id,
  workingDirectory: r.working_directory,
  request: JSON.parse(r.request),
  spec: r.spec === null ? null : JSON.parse(r.spec),
  keyName: r.key_name,
  cancelOnDisconnect: r.cancel_on_disconnect === 1 || r.cancel_on_disconnect === true,
  marker: r.marker,
  owner: r.owner,
  leaseUntil: r.lease_until,
  createdAt: r.created_at,
  startedAt: r.started_at,
  endedAt: r.ended_at,
  result: r.result === null ? null : JSON.parse(r.result)
})

export interface SessionRow {
  id: string
  key_name: string | null
  working_directory: string
  title: string | null
  first_prompt: string | null
  created_at: number
  updated_at: number
  deleted_at: number | null
  run_count: number | string
  last_run_id: string | null
  busy: number | boolean
}

export const toSession = (r: SessionRow): SessionRecord => ({
  id: r.id,
  keyName: r.key_name,
  workingDirectory: r.working_directory,
  title: r.title,
  firstPrompt: r.first_prompt,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
  deletedAt: r.deleted_at,
  runCount: Number(r.run_count),
  lastRunId: r.last_run_id,
  busy: r.busy === 1 || r.busy === true
})

/** A session's columns and its runs' figures (`FROM sessions s`). */
export const SESSION_COLUMNS = `s.*,
  (SELECT COUNT(*) FROM runs WHERE session_id = s.id) AS run_count,
  (SELECT id FROM runs WHERE session_id = s.id ORDER BY rowid DESC LIMIT 1) AS last_run_id,
  (EXISTS (SELECT 1 FROM runs WHERE session_id = s.id AND status IN ('queued', 'running'))
    OR EXISTS (SELECT 1 FROM runs WHERE status IN ('queued', 'running') AND request LIKE '%"fork_session":true%' AND lower(request) LIKE '%"session_id":"' || s.id || '"%')) AS busy`

/** How much of a session's first prompt is kept to show until it has a title. */
const FIRST_PROMPT_CHARS = 200

/** A session's columns, in the order of `SESSION_INSERT_COLUMNS`. */
export const sessionValues = (s: NewSession): [string, string | null, string, string | null, string | null, number] =>
  [s.id, s.keyName, s.workingDirectory, s.title, s.firstPrompt === null ? null : s.firstPrompt.slice(0, FIRST_PROMPT_CHARS), s.createdAt]
export const SESSION_INSERT_COLUMNS = 'id, key_name, working_directory, title, first_prompt, created_at, updated_at'

/** The session a run creates (if it is new): owned by `sessionOwner`, else the run's key. */
export const sessionOfRun = (r: NewRun): NewSession => ({
  id: r.sessionId,
  keyName: r.sessionOwner === undefined ? r.keyName : r.sessionOwner,
  workingDirectory: r.workingDirectory,
  title: null,
  firstPrompt: typeof r.request.prompt === 'string' ? r.request.prompt : null,
  createdAt: r.createdAt
})

export interface DeliveryRow { delivery_id: string, event: string, attempt: number, attempted_at: number, url: string, status_code: number | null, error: string | null, duration_ms: number }

export const toDelivery = (r: DeliveryRow): WebhookDelivery => ({
  ...(r.delivery_id !== '' ? { deliveryId: r.delivery_id } : {}),
  ...(r.event !== 'run.finished' ? { event: r.event } : {}),
  attempt: r.attempt,
  attemptedAt: r.attempted_at,
  url: r.url,
  statusCode: r.status_code,
  error: r.error,
  durationMs: r.duration_ms
})

export interface OutboxRow { id: string, run_id: string, event: string, url: string, body: string, attempt: number, due_at: number }

export const toPending = (r: OutboxRow): PendingWebhook => ({ id: r.id, runId: r.run_id, event: r.event, url: r.url, body: r.body, attempt: r.attempt, dueAt: r.due_at })

/**
 * A page of a run's events with `seq > after`: the stored ones (in order, at most `limit`), then
 * the ones still waiting to be written, at most `limit` in all and `maxBytes` of data (but always
 * at least one event).
 */
export function pageOfEvents (stored: Iterable<StoredEvent>, waiting: Iterable<{ seq: number, type: string, data: string }>, after: number, limit: number, maxBytes: number): StoredEvent[] {
  const out: StoredEvent[] = []
  let bytes = 0
  /** Whether `e` still fits the page: always the first event, then within `limit` and `maxBytes`. */
  const fits = (e: { data: string }): boolean => out.length === 0 || (out.length < limit && bytes + e.data.length <= maxBytes)
  for (const e of stored) {
    if (!fits(e)) return out
    out.push(e)
    bytes += e.data.length
  }
  let last = out.at(-1)?.seq ?? after
  for (const e of waiting) {
    if (e.seq <= last) continue
    if (!fits(e)) break
    out.push({ seq: e.seq, type: e.type as StoredEvent['type'], data: e.data })
    bytes += e.data.length
    last = e.seq
  }
  return out
}
