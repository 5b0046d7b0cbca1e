import type { ApprovalRecord, NewRun, RunFilter, SessionFilter } from '../domain/records.js'
import { SESSION_COLUMNS, SESSION_INSERT_COLUMNS } from './rows.js'

/**
 * The SQL of the run store, written once for both backends. Arguments are `$1`, `$2`, ... in both:
 * PostgreSQL's own placeholders, and SQLite's named parameters (`$1` is a name there; the SQLite
 * backend binds the values by it). Where the engines differ, the `Dialect` says how.
 */

/** A statement and its arguments. */
export interface Query { text: string, values: unknown[] }

/** What differs between the engines' SQL. */
export interface Dialect {
  /** A run's columns: SQLite keeps `rowid` out of `*`. */
  runColumns: string
  /** The larger of two values: SQLite's two-argument `MAX`, PostgreSQL's `GREATEST`. */
  greatest: string
  /** A run's cost in USD, from its result's JSON. */
  cost: string
  /** `LIMIT` without a limit (before an `OFFSET`). */
  noLimit: string
  /** `column` is one of the list argument `param` (SQLite binds a list as JSON text). */
  inList: (column: string, param: string) => string
}

export const SQLITE: Dialect = {
  runColumns: 'rowid, *',
  greatest: 'MAX',
  cost: 'json_extract(result, \'$.total_cost_usd\')',
  noLimit: '-1',
  inList: (column, param) => `${column} IN (SELECT value FROM json_each(${param}))`
}

export const POSTGRES: Dialect = {
  runColumns: '*',
  greatest: 'GREATEST',
  cost: '(result::jsonb->>\'total_cost_usd\')::float8',
  noLimit: 'ALL',
  inList: (column, param) => `${column} = ANY(${param})`
}

/** Finished: neither queued nor running. */
const FINISHED = 'status NOT IN (\'queued\', \'running\')'

/**
 * Record a session. A session not deleted stays as it is (its owner, directory and titles), but a
 * run naming it is activity (`activity`); a deleted one is made anew, its owner kept (admission saw
 * to that).
 */
function upsertSession (d: Dialect, activity: boolean): string {
  const kept = (column: string): string => `${column} = CASE WHEN sessions.deleted_at IS NULL THEN sessions.${column} ELSE excluded.${column} END`
  return `INSERT INTO sessions (${SESSION_INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $6)
    ON CONFLICT (id) DO UPDATE SET
      ${['working_directory', 'title', 'first_prompt', 'created_at'].map(kept).join(',\n      ')},
      updated_at = CASE WHEN sessions.deleted_at IS NULL THEN ${activity ? `${d.greatest}(sessions.updated_at, excluded.updated_at)` : 'sessions.updated_at'} ELSE excluded.updated_at END,
      deleted_at = NULL`
}

/** The fixed statements of the store, in one engine's SQL. */
export function statements (d: Dialect) {
  return {
    ping: 'SELECT 1',
    insertRun: `INSERT INTO runs (id, status, session_id, working_directory, request, spec, key_name, cancel_on_disconnect, created_at)
      VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8)`,
    /** The session a run names: `sessionValues(sessionOfRun(run))`. */
    sessionOfRun: upsertSession(d, true),
    /** A session made without a run: `sessionValues(session)`. */
    insertSession: upsertSession(d, false),
    getRun: `SELECT ${d.runColumns} FROM runs WHERE id = $1`,
    runExists: 'SELECT 1 AS one FROM runs WHERE id = $1',
    // Fenced: only a queued run nobody else holds starts (see `RunStore.markStarted`).
    start: `UPDATE runs SET status = 'running', started_at = $1, marker = $2, spec = NULL, session_id = $3, working_directory = $4, owner = $5, lease_until = $6
      WHERE id = $7 AND status = 'queued' AND (owner IS NULL OR owner = $5)`,
    /** A run's end: status, end time, result (JSON text), id. */
    end: 'UPDATE runs SET status = $1, ended_at = $2, result = $3, spec = NULL WHERE id = $4',
    /** A run's end is activity of its session: end time, run id. */
    touchSessionOfRun: `UPDATE sessions SET updated_at = ${d.greatest}(updated_at, $1) WHERE id = (SELECT session_id FROM runs WHERE id = $2)`,
    renewLeases: 'UPDATE runs SET lease_until = $1 WHERE owner = $2 AND status IN (\'queued\', \'running\')',
    leftoverRunning: `SELECT ${d.runColumns} FROM runs WHERE status = 'running' AND (owner IS NULL OR owner = $1 OR lease_until IS NULL OR lease_until < $2) ORDER BY rowid`,
    queued: `SELECT ${d.runColumns} FROM runs WHERE status = 'queued' ORDER BY rowid`,
    // A replayed append must never fail a whole batch (other runs' events with it).
    insertEvent: 'INSERT INTO events (run_id, seq, type, data) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING',
    eventsAfter: 'SELECT seq, type, data FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3',
    lastSeq: 'SELECT MAX(seq) AS seq FROM events WHERE run_id = $1',
    /** Finished runs older than `$1`, and those beyond the newest `$2`. */
    prunable: `SELECT id FROM runs WHERE ${FINISHED} AND created_at < $1
      UNION SELECT id FROM (SELECT id FROM runs WHERE ${FINISHED} ORDER BY rowid DESC LIMIT ${d.noLimit} OFFSET $2) excess`,
    /** What goes with pruned runs (a list of ids), the runs last. */
    prune: [
      ...['events', 'webhook_deliveries', 'webhook_outbox', 'approvals'].map(table => `DELETE FROM ${table} WHERE ${d.inList('run_id', '$1')}`),
      `DELETE FROM runs WHERE ${d.inList('id', '$1')}`
    ],
    spendSince: `SELECT key_name, COALESCE(SUM(${d.cost}), 0) AS usd FROM runs WHERE key_name IS NOT NULL AND ended_at >= $1 GROUP BY key_name`,
    sessionOwners: 'SELECT id, key_name FROM sessions',
    getSession: `SELECT ${SESSION_COLUMNS} FROM sessions s WHERE id = $1`,
    recordDelivery: `INSERT INTO webhook_deliveries (run_id, delivery_id, event, attempt, attempted_at, url, status_code, error, duration_ms)
      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
      ON CONFLICT (run_id, delivery_id, attempt) DO UPDATE SET event = excluded.event, attempted_at = excluded.attempted_at, url = excluded.url,
        status_code = excluded.status_code, error = excluded.error, duration_ms = excluded.duration_ms`,
    deliveries: 'SELECT delivery_id, event, attempt, attempted_at, url, status_code, error, duration_ms FROM webhook_deliveries WHERE run_id = $1 ORDER BY attempted_at, attempt',
    queueWebhook: `INSERT INTO webhook_outbox (id, run_id, event, url, body, attempt, due_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
      ON CONFLICT (id) DO UPDATE SET run_id = excluded.run_id, event = excluded.event, url = excluded.url, body = excluded.body, attempt = excluded.attempt, due_at = excluded.due_at`,
    webhookDone: 'DELETE FROM webhook_outbox WHERE id = $1',
    pendingWebhooks: 'SELECT id, run_id, event, url, body, attempt, due_at FROM webhook_outbox ORDER BY due_at',
    // An approval keeps its place (rowid) among those of the same time when it is answered.
    saveApproval: `INSERT INTO approvals (id, run_id, key_name, status, created_at, record) VALUES ($1, $2, $3, $4, $5, $6)
      ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record`,
    getApproval: 'SELECT record FROM approvals WHERE id = $1'
  }
}

export type Statements = ReturnType<typeof statements>

/** The arguments of `insertRun`. */
export const runValues = (r: NewRun): unknown[] =>
  [r.id, r.sessionId, r.workingDirectory, JSON.stringify(r.request), JSON.stringify(r.spec), r.keyName, r.cancelOnDisconnect, r.createdAt]

/** Conditions joined by AND, their arguments numbered in order. */
class Where {
  readonly values: unknown[] = []
  private readonly conditions: string[] = []

  /** A condition, each of its arguments written `$` where it goes. */
  add (condition: string, ...values: unknown[]): this {
    let i = 0
    this.conditions.push(condition.replace(/\$(?!\d)/g, () => this.arg(values[i++])))
    return this
  }

  /** The next argument's placeholder. */
  arg (v: unknown): string {
    this.values.push(v)
    return `$${this.values.length}`
  }

  get clause (): string {
    return this.conditions.length > 0 ? `WHERE ${this.conditions.join(' AND ')}` : ''
  }
}

/** A page of runs, newest first; `before` is the `rowid` of the last run of the previous page. */
export function runsPage (d: Dialect, filter: RunFilter): Query {
  const w = new Where()
  if (filter.status !== undefined) w.add('status = $', filter.status)
  if (filter.sessionId !== undefined) w.add('session_id = $', filter.sessionId)
  if (filter.keyName !== undefined) w.add('key_name = $', filter.keyName)
  if (filter.before !== undefined) w.add('rowid < $', filter.before)
  return { text: `SELECT ${d.runColumns} FROM runs ${w.clause} ORDER BY rowid DESC LIMIT ${w.arg(filter.limit)}`, values: w.values }
}

/** A page of sessions not deleted, most recently active first (then by id), after the `(updatedAt, id)` cursor. */
export function sessionsPage (filter: SessionFilter): Query {
  const w = new Where().add('deleted_at IS NULL')
  if (filter.keyName === null) w.add('key_name IS NULL')
  else if (filter.keyName !== undefined) w.add('key_name = $', filter.keyName)
  if (filter.workingDirectory !== undefined) w.add('working_directory = $', filter.workingDirectory)
  if (filter.before !== undefined) w.add('(updated_at, id) < ($, $)', filter.before.updatedAt, filter.before.id)
  return { text: `SELECT ${SESSION_COLUMNS} FROM sessions s ${w.clause} ORDER BY updated_at DESC, id DESC LIMIT ${w.arg(filter.limit)}`, values: w.values }
}

/** Approvals, oldest first: of one run, of one key's runs, and/or in one state. */
export function approvalsPage (filter: { runId?: string, keyName?: string, status?: ApprovalRecord['status'], limit: number }): Query {
  const w = new Where()
  if (filter.runId !== undefined) w.add('run_id = $', filter.runId)
  if (filter.keyName !== undefined) w.add('key_name = $', filter.keyName)
  if (filter.status !== undefined) w.add('status = $', filter.status)
  return { text: `SELECT record FROM approvals ${w.clause} ORDER BY created_at, rowid LIMIT ${w.arg(filter.limit)}`, values: w.values }
}

/** A change of a session's title, activity time or deletion; undefined when nothing changes. */
export function sessionChange (d: Dialect, id: string, change: { title?: string | null, updatedAt?: number, deletedAt?: number }): Query | undefined {
  const sets: string[] = []
  const w = new Where()
  if (change.title !== undefined) sets.push(`title = ${w.arg(change.title)}`)
  if (change.updatedAt !== undefined) sets.push(`updated_at = ${d.greatest}(updated_at, ${w.arg(change.updatedAt)})`)
  if (change.deletedAt !== undefined) sets.push(`deleted_at = ${w.arg(change.deletedAt)}`)
  if (sets.length === 0) return undefined
  return { text: `UPDATE sessions SET ${sets.join(', ')} WHERE id = ${w.arg(id)}`, values: w.values }
}
