import pg from 'pg'
import type { RunResult } from '../domain/run.js'
import { PG_MIGRATIONS } from './pg-migrations.js'
import { WriteRetry } from './write-retry.js'
import {
  pageOfEvents, SESSION_COLUMNS, SESSION_INSERT_COLUMNS, sessionOfRun, sessionValues, toDelivery, toPending, toRecord, toSession,
  type DeliveryRow, type OutboxRow, type RunRow, type SessionRow
} from './rows.js'
import { ClaimLost, MAX_UNFLUSHED_EVENTS, type RunStore } from './store.js'
import { type ApprovalRecord, type NewRun, type NewSession, type PendingWebhook, type RunFilter, type RunRecord, type SessionFilter, type SessionRecord, type StoredEvent, type WebhookDelivery } from '../domain/records.js'

/** Held while migrations run, so instances starting at once apply each exactly once. */
const MIGRATION_LOCK = 0x63636170 // 'ccap'

// BIGINT columns hold epoch milliseconds and row numbers: well within a double.
pg.types.setTypeParser(pg.types.builtins.INT8, v => Number(v))

// A session named again after it was deleted starts anew (its owner stays: admission saw to that).
const INSERT_SESSION = `INSERT INTO sessions (${SESSION_INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $6)`
const UPSERT_SESSION = `${INSERT_SESSION}
  ON CONFLICT (id) DO UPDATE SET
    working_directory = CASE WHEN sessions.deleted_at IS NULL THEN sessions.working_directory ELSE EXCLUDED.working_directory END,
    title = CASE WHEN sessions.deleted_at IS NULL THEN sessions.title ELSE EXCLUDED.title END,
    first_prompt = CASE WHEN sessions.deleted_at IS NULL THEN sessions.first_prompt ELSE EXCLUDED.first_prompt END,
    created_at = CASE WHEN sessions.deleted_at IS NULL THEN sessions.created_at ELSE EXCLUDED.created_at END,
    updated_at = GREATEST(sessions.updated_at, EXCLUDED.updated_at),
    deleted_at = NULL`

export interface PostgresStoreOptions {
  /** `postgres://user:pass@host:port/db` */
  url: string
  /** Connections in the pool. */
  poolSize?: number
  /** Events are written in one statement at most this often (ms). */
  flushIntervalMs?: number
  /** ... or as soon as this many are waiting. */
  flushMaxEvents?: number
  /**
   * Called once when writing the event log starts failing: the events stay queued, and writes are
   * retried, backing off (see `WriteRetry`), without another call until one works. Also called
   * when an idle pooled connection breaks.
   */
  onError?: (err: Error) => void
  /** Called once when writing works again, with the number of attempts that failed. */
  onRecovered?: (failedAttempts: number) => void
  /**
   * Cluster mode: each write of events also notifies `ccapi_events` with `runId first last
   * origin`, in the same transaction (delivered once committed), so other instances' followers
   * read them from the table.
   */
  origin?: string
}

/** The notification channel of committed events (see `PostgresStoreOptions.origin`). */
export const EVENTS_CHANNEL = 'ccapi_events'

/**
 * The run store of a cluster, in PostgreSQL: the same tables as the embedded store, shared by
 * every instance. Event appends are buffered as in the embedded store (visible to this process at
 * once, written in one multi-row insert at most every `flushIntervalMs`); everything else is a
 * statement on a pooled connection. Open with `PostgresRunStore.open()`, which applies the
 * migrations first.
 */
export class PostgresRunStore implements RunStore {
  private pending: Array<{ runId: string, seq: number, type: string, data: string }> = []
  private flushing: Promise<void> = Promise.resolve()
  private readonly timer: NodeJS.Timeout
  private readonly flushMaxEvents: number
  private closed = false
  /** Run ends being written: read back as written (this process's view), and waited for by `close()`. */
  private readonly finishing = new Map<string, { result: RunResult, endedAt: number, write: Promise<void> }>()
  /** When to try again while writes fail, and what to report. */
  private readonly retry: WriteRetry

  private constructor (readonly pool: pg.Pool, private readonly opts: PostgresStoreOptions) {
    this.flushMaxEvents = opts.flushMaxEvents ?? MAX_UNFLUSHED_EVENTS
    this.retry = new WriteRetry({ ...(opts.onError !== undefined ? { onError: opts.onError } : {}), ...(opts.onRecovered !== undefined ? { onRecovered: opts.onRecovered } : {}) })
    this.timer = setInterval(() => {
      // Reported once by the retry; tried again when due.
      if (this.pending.length > 0 && this.retry.due()) this.flush().catch(() => {})
    }, opts.flushIntervalMs ?? 25)
    this.timer.unref()
  }

  /** Connect, apply what migrations are missing (one instance at a time), and return the store. */
  static async open (opts: PostgresStoreOptions): Promise<PostgresRunStore> {
    const pool = new pg.Pool({ connectionString: opts.url, max: opts.poolSize ?? 10 })
    // An idle connection that breaks (the server restarts) is replaced, not fatal.
    pool.on('error', err => opts.onError?.(err))
    try {
      await migrate(pool)
    } catch (err) {
      await pool.end()
      throw err
    }
    return new PostgresRunStore(pool, opts)
  }

  async ping (): Promise<void> {
    await this.pool.query('SELECT 1')
    if (this.retry.failing) throw this.retry.lastError
  }

  async insertRun (r: NewRun): Promise<void> {
    await this.admitRun(r, async () => {})
  }

  /**
   * Insert a run after `check` has passed, in one transaction: `check` takes its locks and reads
   * (cluster admission), and throws to refuse the run.
   */
  async admitRun (r: NewRun, check: (c: pg.PoolClient) => Promise<void>): Promise<void> {
    await this.transaction(async c => {
      await check(c)
      await c.query(`INSERT INTO runs (id, status, session_id, working_directory, request, spec, key_name, cancel_on_disconnect, created_at)
        VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8)`,
      [r.id, r.sessionId, r.workingDirectory, JSON.stringify(r.request), JSON.stringify(r.spec), r.keyName, r.cancelOnDisconnect, r.createdAt])
      await c.query(UPSERT_SESSION, sessionValues(sessionOfRun(r)))
    })
  }

  async markStarted (id: string, s: { startedAt: number, marker: string, sessionId: string, workingDirectory: string, owner: string, leaseUntil: number }): Promise<void> {
    // Fenced: a run claimed by an instance whose claim lapsed (and went back to the queue, maybe
    // to another instance) is not started here.
    const { rowCount } = await this.pool.query('UPDATE runs SET status = \'running\', started_at = $1, marker = $2, spec = NULL, session_id = $3, working_directory = $4, owner = $5, lease_until = $6 WHERE id = $7 AND status = \'queued\' AND (owner IS NULL OR owner = $5)',
      [s.startedAt, s.marker, s.sessionId, s.workingDirectory, s.owner, s.leaseUntil, id])
    if (rowCount === 0 && (await this.pool.query('SELECT 1 FROM runs WHERE id = $1', [id])).rows.length > 0) {
      throw new ClaimLost(`run ${id} is no longer this instance's to start`)
    }
  }

  async markFinished (id: string, result: RunResult, endedAt: number): Promise<void> {
    const write = (async () => {
      await this.flush()
      await this.transaction(async c => { await this.endWith(c, id, JSON.stringify(result), endedAt) })
    })()
    const entry = { result, endedAt, write }
    this.finishing.set(id, entry)
    try {
      await write
    } finally {
      if (this.finishing.get(id) === entry) this.finishing.delete(id)
    }
  }

  /** Record a run's end: its result (the text of its `result` event), status and end time. */
  private async endWith (c: pg.PoolClient, id: string, resultJson: string, endedAt?: number): Promise<void> {
    let result: { status?: unknown, timestamp?: unknown }
    try {
      result = JSON.parse(resultJson)
    } catch {
      return
    }
    if (typeof result.status !== 'string') return
    const at = endedAt ?? (typeof result.timestamp === 'string' && Number.isFinite(Date.parse(result.timestamp)) ? Date.parse(result.timestamp) : Date.now())
    await c.query('UPDATE runs SET status = $1, ended_at = $2, result = $3, spec = NULL WHERE id = $4', [result.status, at, resultJson, id])
    await c.query('UPDATE sessions SET updated_at = GREATEST(updated_at, $1) WHERE id = (SELECT session_id FROM runs WHERE id = $2)', [at, id])
  }

  async renewLeases (owner: string, leaseUntil: number): Promise<void> {
    // Claimed runs not started yet (cluster mode) are held under the same lease.
    await this.pool.query('UPDATE runs SET lease_until = $1 WHERE owner = $2 AND status IN (\'queued\', \'running\')', [leaseUntil, owner])
  }

  async getRun (id: string): Promise<RunRecord | undefined> {
    const { rows } = await this.pool.query<RunRow>('SELECT * FROM runs WHERE id = $1', [id])
    if (rows[0] === undefined) return undefined
    const record = toRecord(rows[0])
    // An end being written is the truth already.
    const f = this.finishing.get(id)
    return f === undefined ? record : { ...record, status: f.result.status, endedAt: f.endedAt, result: f.result, spec: null }
  }

  async listRuns (filter: RunFilter): Promise<RunRecord[]> {
    // Read your writes: a run this process has read back as ended is listed as ended too.
    await Promise.allSettled([...this.finishing.values()].map(async f => await f.write))
    const where: string[] = []
    const args: unknown[] = []
    const arg = (v: unknown): string => { args.push(v); return `$${args.length}` }
    if (filter.status !== undefined) where.push(`status = ${arg(filter.status)}`)
    if (filter.sessionId !== undefined) where.push(`session_id = ${arg(filter.sessionId)}`)
    if (filter.keyName !== undefined) where.push(`key_name = ${arg(filter.keyName)}`)
    if (filter.before !== undefined) where.push(`rowid < ${arg(filter.before)}`)
    const sql = `SELECT * FROM runs ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY rowid DESC LIMIT ${arg(filter.limit)}`
    return (await this.pool.query<RunRow>(sql, args)).rows.map(toRecord)
  }

  async leftovers (owner: string, now: number): Promise<{ running: RunRecord[], queued: RunRecord[] }> {
    const running = await this.pool.query<RunRow>('SELECT * FROM runs WHERE status = \'running\' AND (owner IS NULL OR owner = $1 OR lease_until IS NULL OR lease_until < $2) ORDER BY rowid', [owner, now])
    const queued = await this.pool.query<RunRow>('SELECT * FROM runs WHERE status = \'queued\' ORDER BY rowid')
    return { running: running.rows.map(toRecord), queued: queued.rows.map(toRecord) }
  }

  appendEvent (runId: string, seq: number, type: string, data: string): void {
    this.pending.push({ runId, seq, type, data })
    // While writes fail, the timer retries when due: appends do not hammer a failing database.
    if (this.pending.length >= this.flushMaxEvents && this.retry.due()) this.flush().catch(() => {})
  }

  /**
   * Write the waiting events in one statement. They stay visible (and queued, in order) until the
   * write has committed; a failed write keeps them for the next attempt. Flushes run one at a time.
   */
  async flush (): Promise<void> {
    await this.write(false)
  }

  /**
   * One flush, after those under way. While writes fail and the next attempt is not due (decided
   * when its turn comes), it fails at once, untried, unless `force` (the last one, at close).
   */
  private async write (force: boolean): Promise<void> {
    const next = this.flushing.then(async () => {
      if (!force && !this.retry.due()) throw this.retry.lastError ?? new Error('the event log cannot be written now')
      try {
        await this.writePending()
      } catch (err) {
        this.retry.failed(err as Error)
        throw err
      }
      this.retry.succeeded()
    })
    this.flushing = next.catch(() => {})
    await next
  }

  private async writePending (): Promise<void> {
    while (this.pending.length > 0) {
      const batch = this.pending.slice(0, 5000)
      const values: string[] = []
      const args: unknown[] = []
      for (const e of batch) {
        values.push(`($${args.length + 1}, $${args.length + 2}, $${args.length + 3}, $${args.length + 4})`)
        args.push(e.runId, e.seq, e.type, e.data)
      }
      // ON CONFLICT: a replayed append must never fail a whole batch (other runs' events with it).
      const insert = `INSERT INTO events (run_id, seq, type, data) VALUES ${values.join(', ')} ON CONFLICT DO NOTHING`
      // A run's end is written with its `result` event, in one transaction: whoever hears of the
      // result (a follower, on any instance) reads the run as ended.
      const ends = batch.filter(e => e.type === 'result')
      const notes: string[] = []
      if (this.opts.origin !== undefined) {
        const spans = new Map<string, [number, number]>()
        for (const e of batch) {
          const span = spans.get(e.runId)
          if (span === undefined) spans.set(e.runId, [e.seq, e.seq])
          else span[1] = e.seq
        }
        for (const [runId, [first, last]] of spans) notes.push(`${runId} ${first} ${last} ${this.opts.origin}`)
      }
      if (ends.length === 0 && notes.length === 0) await this.pool.query(insert, args)
      else {
        await this.transaction(async c => {
          await c.query(insert, args)
          for (const e of ends) await this.endWith(c, e.runId, e.data)
          if (notes.length > 0) await c.query(`SELECT pg_notify('${EVENTS_CHANNEL}', n) FROM unnest($1::text[]) AS n`, [notes])
        })
      }
      this.pending.splice(0, batch.length)
    }
  }

  async eventsAfter (runId: string, after: number, limit: number, maxBytes = Number.POSITIVE_INFINITY): Promise<StoredEvent[]> {
    // Read the waiting events first: one that is written meanwhile is then found in the table.
    const waiting = this.pending.filter(e => e.runId === runId && e.seq > after)
    const { rows } = await this.pool.query<StoredEvent>('SELECT seq, type, data FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3', [runId, after, limit])
    return pageOfEvents(rows, waiting, after, limit, maxBytes)
  }

  async lastSeq (runId: string): Promise<number> {
    const { rows } = await this.pool.query<{ seq: number | null }>('SELECT MAX(seq) AS seq FROM events WHERE run_id = $1', [runId])
    let seq = rows[0]?.seq ?? 0
    for (const e of this.pending) if (e.runId === runId && e.seq > seq) seq = e.seq
    return seq
  }

  async prune (opts: { maxAgeMs: number, maxRuns: number, now?: number }): Promise<number> {
    const now = opts.now ?? Date.now()
    return await this.transaction(async c => {
      const finished = "status NOT IN ('queued', 'running')"
      const { rows } = await c.query<{ id: string }>(`SELECT id FROM runs WHERE ${finished} AND created_at < $1
        UNION SELECT id FROM (SELECT id FROM runs WHERE ${finished} ORDER BY rowid DESC OFFSET $2) excess`, [now - opts.maxAgeMs, opts.maxRuns])
      const ids = rows.map(r => r.id)
      if (ids.length === 0) return 0
      for (const table of ['events', 'webhook_deliveries', 'webhook_outbox', 'approvals']) await c.query(`DELETE FROM ${table} WHERE run_id = ANY($1)`, [ids])
      await c.query('DELETE FROM runs WHERE id = ANY($1)', [ids])
      return ids.length
    })
  }

  async spendSince (sinceMs: number): Promise<Map<string, number>> {
    const { rows } = await this.pool.query<{ key_name: string, usd: number }>(
      'SELECT key_name, COALESCE(SUM((result::jsonb->>\'total_cost_usd\')::float8), 0) AS usd FROM runs WHERE key_name IS NOT NULL AND ended_at >= $1 GROUP BY key_name', [sinceMs])
    return new Map(rows.map(r => [r.key_name, Number(r.usd)]))
  }

  async sessionOwners (): Promise<Map<string, string | null>> {
    const { rows } = await this.pool.query<{ id: string, key_name: string | null }>('SELECT id, key_name FROM sessions')
    return new Map(rows.map(r => [r.id, r.key_name]))
  }

  async insertSession (s: NewSession): Promise<void> {
    // The same rule as a run's: a known session stays as it is, a deleted one is made anew.
    await this.pool.query(UPSERT_SESSION, sessionValues(s))
  }

  async getSession (id: string): Promise<SessionRecord | undefined> {
    const { rows } = await this.pool.query<SessionRow>(`SELECT ${SESSION_COLUMNS} FROM sessions s WHERE id = $1`, [id])
    return rows[0] === undefined ? undefined : toSession(rows[0])
  }

  async listSessions (filter: SessionFilter): Promise<SessionRecord[]> {
    const where = ['deleted_at IS NULL']
    const args: unknown[] = []
    const arg = (v: unknown): string => { args.push(v); return `$${args.length}` }
    if (filter.keyName !== undefined) where.push(filter.keyName === null ? 'key_name IS NULL' : `key_name = ${arg(filter.keyName)}`)
    if (filter.workingDirectory !== undefined) where.push(`working_directory = ${arg(filter.workingDirectory)}`)
    if (filter.before !== undefined) where.push(`(updated_at, id) < (${arg(filter.before.updatedAt)}, ${arg(filter.before.id)})`)
    const sql = `SELECT ${SESSION_COLUMNS} FROM sessions s WHERE ${where.join(' AND ')} ORDER BY updated_at DESC, id DESC LIMIT ${arg(filter.limit)}`
    return (await this.pool.query<SessionRow>(sql, args)).rows.map(toSession)
  }

  async updateSession (id: string, change: { title?: string | null, updatedAt?: number, deletedAt?: number }): Promise<void> {
    const sets: string[] = []
    const args: unknown[] = []
    const arg = (v: unknown): string => { args.push(v); return `$${args.length}` }
    if (change.title !== undefined) sets.push(`title = ${arg(change.title)}`)
    if (change.updatedAt !== undefined) sets.push(`updated_at = GREATEST(updated_at, ${arg(change.updatedAt)})`)
    if (change.deletedAt !== undefined) sets.push(`deleted_at = ${arg(change.deletedAt)}`)
    if (sets.length === 0) return
    await this.pool.query(`UPDATE sessions SET ${sets.join(', ')} WHERE id = ${arg(id)}`, args)
  }

  async recordDelivery (runId: string, d: WebhookDelivery): Promise<void> {
    await this.pool.query(`INSERT INTO webhook_deliveries (run_id, delivery_id, event, attempt, attempted_at, url, status_code, error, duration_ms)
      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
      ON CONFLICT (run_id, delivery_id, attempt) DO UPDATE SET event = EXCLUDED.event, attempted_at = EXCLUDED.attempted_at, url = EXCLUDED.url,
        status_code = EXCLUDED.status_code, error = EXCLUDED.error, duration_ms = EXCLUDED.duration_ms`,
    [runId, d.deliveryId ?? '', d.event ?? 'run.finished', d.attempt, d.attemptedAt, d.url, d.statusCode, d.error, d.durationMs])
  }

  async deliveries (runId: string): Promise<WebhookDelivery[]> {
    const { rows } = await this.pool.query<DeliveryRow>('SELECT delivery_id, event, attempt, attempted_at, url, status_code, error, duration_ms FROM webhook_deliveries WHERE run_id = $1 ORDER BY attempted_at, attempt', [runId])
    return rows.map(toDelivery)
  }

  async queueWebhook (w: PendingWebhook): Promise<void> {
    await this.pool.query(`INSERT INTO webhook_outbox (id, run_id, event, url, body, attempt, due_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
      ON CONFLICT (id) DO UPDATE SET run_id = EXCLUDED.run_id, event = EXCLUDED.event, url = EXCLUDED.url, body = EXCLUDED.body, attempt = EXCLUDED.attempt, due_at = EXCLUDED.due_at`,
    [w.id, w.runId, w.event, w.url, w.body, w.attempt, w.dueAt])
  }

  async webhookDone (id: string): Promise<void> {
    await this.pool.query('DELETE FROM webhook_outbox WHERE id = $1', [id])
  }

  async pendingWebhooks (): Promise<PendingWebhook[]> {
    const { rows } = await this.pool.query<OutboxRow>('SELECT id, run_id, event, url, body, attempt, due_at FROM webhook_outbox ORDER BY due_at')
    return rows.map(toPending)
  }

  async saveApproval (a: ApprovalRecord): Promise<void> {
    await this.pool.query(`INSERT INTO approvals (id, run_id, key_name, status, created_at, record) VALUES ($1, $2, $3, $4, $5, $6)
      ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, record = EXCLUDED.record`,
    [a.id, a.runId, a.keyName, a.status, a.createdAt, JSON.stringify(a)])
  }

  async getApproval (id: string): Promise<ApprovalRecord | undefined> {
    const { rows } = await this.pool.query<{ record: string }>('SELECT record FROM approvals WHERE id = $1', [id])
    return rows[0] === undefined ? undefined : JSON.parse(rows[0].record) as ApprovalRecord
  }

  async listApprovals (filter: { runId?: string, keyName?: string, status?: ApprovalRecord['status'], limit: number }): Promise<ApprovalRecord[]> {
    const where: string[] = []
    const args: unknown[] = []
    const arg = (v: unknown): string => { args.push(v); return `$${args.length}` }
    if (filter.runId !== undefined) where.push(`run_id = ${arg(filter.runId)}`)
    if (filter.keyName !== undefined) where.push(`key_name = ${arg(filter.keyName)}`)
    if (filter.status !== undefined) where.push(`status = ${arg(filter.status)}`)
    const sql = `SELECT record FROM approvals ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY created_at, rowid LIMIT ${arg(filter.limit)}`
    return (await this.pool.query<{ record: string }>(sql, args)).rows.map(r => JSON.parse(r.record) as ApprovalRecord)
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    clearInterval(this.timer)
    try {
      // Run ends already under way are written before the connections go.
      await Promise.allSettled([...this.finishing.values()].map(f => f.write))
      await this.write(true)
    } finally {
      await this.pool.end()
    }
  }

  async transaction<T> (fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    return await inTransaction(this.pool, fn)
  }
}

/** Run `fn` in a transaction on a pooled connection: committed when it returns, rolled back when it throws. */
export async function inTransaction<T> (pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await pool.connect()
  try {
    await c.query('BEGIN')
    const out = await fn(c)
    await c.query('COMMIT')
    return out
  } catch (err) {
    await c.query('ROLLBACK').catch(() => {})
    throw err
  } finally {
    c.release()
  }
}

/** Apply the migrations not yet applied, holding an advisory lock so only one instance does. */
async function migrate (pool: pg.Pool): Promise<void> {
  await inTransaction(pool, async c => {
    await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK])
    await c.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)')
    const { rows } = await c.query<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_migrations')
    for (let v = rows[0]?.v ?? 0; v < PG_MIGRATIONS.length; v++) {
      await c.query(PG_MIGRATIONS[v]!)
      await c.query('INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)', [v + 1, Date.now()])
    }
  })
}
