import Database from 'better-sqlite3'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import type { RunResult } from '../domain/run.js'
import { Checkpointer } from './checkpointer.js'
import { createPrivateFile } from './data-dir-lock.js'
import { MIGRATIONS } from './migrations.js'
import { WriteRetry } from './write-retry.js'
import { MAX_UNFLUSHED_EVENTS, type RunStore } from './store.js'
import { type ApprovalRecord, type NewRun, type NewSession, type PendingWebhook, type RunFilter, type RunRecord, type SessionFilter, type SessionRecord, type StoredEvent, type WebhookDelivery } from '../domain/records.js'
import {
  pageOfEvents, SESSION_COLUMNS, SESSION_INSERT_COLUMNS, sessionOfRun, sessionValues, toDelivery, toPending, toRecord, toSession,
  type DeliveryRow, type OutboxRow, type RunRow, type SessionRow
} from './rows.js'

export type { RunRecord, StoredEvent, WebhookDelivery } from '../domain/records.js'

/** A session's values as the named parameters of the statements below. */
function namedSession (s: NewSession): Record<string, unknown> {
  const [id, keyName, workingDirectory, title, firstPrompt, createdAt] = sessionValues(s)
  return { id, key_name: keyName, working_directory: workingDirectory, title, first_prompt: firstPrompt, created_at: createdAt }
}

export interface RunStoreOptions {
  /** Directory of the database file; `:memory:` for a throwaway store. */
  dataDir: string
  /** Events are written in one transaction at most this often (ms). */
  flushIntervalMs?: number
  /** ... or as soon as this many are waiting. */
  flushMaxEvents?: number
  /** ... or as soon as they hold this many bytes (a chatty run's big lines stay bounded). */
  flushMaxBytes?: number
  /**
   * Called once when writing the event log starts failing (a full disk): the events stay queued,
   * and writes are retried, backing off (see `WriteRetry`), without another call until one works.
   */
  onError?: (err: Error) => void
  /** Called once when writing works again, with the number of attempts that failed. */
  onRecovered?: (failedAttempts: number) => void
}

/**
 * The embedded run store of one machine: one row per run and an append-only event log per run, in
 * SQLite (WAL). Event appends are batched: they wait in memory at most `flushIntervalMs` and are
 * written in one transaction, so a chatty run is not slowed by the disk. Reads see unflushed events
 * too. The methods are async to fit `RunStore`; SQLite itself answers synchronously.
 */
export class SqliteRunStore implements RunStore {
  private readonly db: Database.Database
  private pending: Array<{ runId: string, seq: number, type: string, data: string }> = []
  private pendingBytes = 0
  private readonly flushMaxBytes: number
  private readonly timer: NodeJS.Timeout
  private readonly flushMaxEvents: number
  private readonly stmts
  private readonly pendingFinishes = new Map<string, { result: RunResult, endedAt: number }>()
  /** When to try again while writes fail, and what to report. */
  private readonly retry: WriteRetry
  private readonly checkpointer: Checkpointer | undefined

  constructor (opts: RunStoreOptions) {
    let file = ':memory:'
    if (opts.dataDir !== ':memory:') {
      mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 })
      file = join(opts.dataDir, 'runs.db')
      // Every prompt and output is in it (and SQLite gives -wal and -shm the file's own mode).
      createPrivateFile(file)
    }
    this.db = new Database(file)
    this.db.pragma('journal_mode = WAL')
    // WAL with NORMAL sync is durable against process crashes (kill -9), which is what we need.
    this.db.pragma('synchronous = NORMAL')
    this.db.pragma('busy_timeout = 5000')
    this.migrate()
    if (file !== ':memory:') {
      // Checkpoints happen off the event loop (their fsync would stall live events).
      this.db.pragma('wal_autocheckpoint = 0')
      this.checkpointer = new Checkpointer(file)
    }
    this.retry = new WriteRetry({ ...(opts.onError !== undefined ? { onError: opts.onError } : {}), ...(opts.onRecovered !== undefined ? { onRecovered: opts.onRecovered } : {}) })
    // Tests may hold more back; the server keeps the default, which recovery relies on.
    this.flushMaxEvents = opts.flushMaxEvents ?? MAX_UNFLUSHED_EVENTS
    this.flushMaxBytes = opts.flushMaxBytes ?? 1024 * 1024
    this.timer = setInterval(() => {
      if (!this.retry.due()) return
      try {
        this.flushNow()
      } catch {
        // A full disk must not crash the server from a timer; reported once, retried when due.
      }
    }, opts.flushIntervalMs ?? 25)
    this.timer.unref()
    const db = this.db
    this.stmts = {
      insert: db.prepare(`INSERT INTO runs (id, status, session_id, working_directory, request, spec, key_name, cancel_on_disconnect, created_at)
        VALUES (@id, @status, @session_id, @working_directory, @request, @spec, @key_name, @cancel_on_disconnect, @created_at)`),
      get: db.prepare('SELECT rowid, * FROM runs WHERE id = ?'),
      ping: db.prepare('SELECT 1'),
      started: db.prepare('UPDATE runs SET status = \'running\', started_at = ?, marker = ?, spec = NULL, session_id = ?, working_directory = ?, owner = ?, lease_until = ? WHERE id = ?'),
      renew: db.prepare('UPDATE runs SET lease_until = ? WHERE owner = ? AND status = \'running\''),
      leftoverRunning: db.prepare('SELECT rowid, * FROM runs WHERE status = \'running\' AND (owner IS NULL OR owner = ? OR lease_until IS NULL OR lease_until < ?) ORDER BY rowid'),
      spendSince: db.prepare('SELECT key_name, COALESCE(SUM(json_extract(result, \'$.total_cost_usd\')), 0) AS usd FROM runs WHERE key_name IS NOT NULL AND ended_at >= ? GROUP BY key_name'),
      sessionOwners: db.prepare('SELECT id, key_name FROM sessions'),
      // A session named again after it was deleted starts anew (its owner stays: admission saw to that).
      session: db.prepare(`INSERT INTO sessions (${SESSION_INSERT_COLUMNS})
        VALUES (@id, @key_name, @working_directory, @title, @first_prompt, @created_at, @created_at)
        ON CONFLICT (id) DO UPDATE SET
          working_directory = CASE WHEN deleted_at IS NULL THEN working_directory ELSE excluded.working_directory END,
          title = CASE WHEN deleted_at IS NULL THEN title ELSE excluded.title END,
          first_prompt = CASE WHEN deleted_at IS NULL THEN first_prompt ELSE excluded.first_prompt END,
          created_at = CASE WHEN deleted_at IS NULL THEN created_at ELSE excluded.created_at END,
          updated_at = MAX(updated_at, excluded.updated_at),
          deleted_at = NULL`),
      getSession: db.prepare(`SELECT ${SESSION_COLUMNS} FROM sessions s WHERE id = ?`),
      touchSessionOfRun: db.prepare('UPDATE sessions SET updated_at = MAX(updated_at, ?) WHERE id = (SELECT session_id FROM runs WHERE id = ?)'),
      finished: db.prepare('UPDATE runs SET status = ?, ended_at = ?, result = ?, spec = NULL WHERE id = ?'),
      byStatus: db.prepare('SELECT rowid, * FROM runs WHERE status = ? ORDER BY rowid'),
      // OR IGNORE: a replayed append must never fail a whole batch (other runs' events with it).
      event: db.prepare('INSERT OR IGNORE INTO events (run_id, seq, type, data) VALUES (?, ?, ?, ?)'),
      eventsAfter: db.prepare('SELECT seq, type, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?'),
      lastSeq: db.prepare('SELECT MAX(seq) AS seq FROM events WHERE run_id = ?'),
      deleteRun: db.prepare('DELETE FROM runs WHERE id = ?'),
      deleteDeliveries: db.prepare('DELETE FROM webhook_deliveries WHERE run_id = ?'),
      delivery: db.prepare('INSERT OR REPLACE INTO webhook_deliveries (run_id, delivery_id, event, attempt, attempted_at, url, status_code, error, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)'),
      deliveries: db.prepare('SELECT delivery_id, event, attempt, attempted_at, url, status_code, error, duration_ms FROM webhook_deliveries WHERE run_id = ? ORDER BY attempted_at, attempt'),
      deleteEvents: db.prepare('DELETE FROM events WHERE run_id = ?'),
      queueWebhook: db.prepare('INSERT OR REPLACE INTO webhook_outbox (id, run_id, event, url, body, attempt, due_at) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      webhookDone: db.prepare('DELETE FROM webhook_outbox WHERE id = ?'),
      deleteWebhooks: db.prepare('DELETE FROM webhook_outbox WHERE run_id = ?'),
      pendingWebhooks: db.prepare('SELECT id, run_id, event, url, body, attempt, due_at FROM webhook_outbox ORDER BY due_at'),
      saveApproval: db.prepare('INSERT OR REPLACE INTO approvals (id, run_id, key_name, status, created_at, record) VALUES (?, ?, ?, ?, ?, ?)'),
      getApproval: db.prepare('SELECT record FROM approvals WHERE id = ?'),
      deleteApprovals: db.prepare('DELETE FROM approvals WHERE run_id = ?')
    }
  }

  private migrate (): void {
    const version = this.db.pragma('user_version', { simple: true }) as number
    for (let v = version; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!)
        this.db.pragma(`user_version = ${v + 1}`)
      })()
    }
  }

  /** Answers, and the last write went through (a full disk makes the store unavailable until one does). */
  async ping (): Promise<void> {
    this.stmts.ping.get()
    if (this.retry.failing) throw this.retry.lastError
  }

  async insertRun (r: NewRun): Promise<void> {
    this.db.transaction(() => {
      this.insertRunNow(r)
      this.stmts.session.run(namedSession(sessionOfRun(r)))
    })()
  }

  private insertRunNow (r: NewRun): void {
    this.stmts.insert.run({
      id: r.id,
      status: 'queued',
      session_id: r.sessionId,
      working_directory: r.workingDirectory,
      request: JSON.stringify(r.request),
      spec: JSON.stringify(r.spec),
      key_name: r.keyName,
      cancel_on_disconnect: r.cancelOnDisconnect ? 1 : 0,
      created_at: r.createdAt
    })
  }

  async markStarted (id: string, s: { startedAt: number, marker: string, sessionId: string, workingDirectory: string, owner: string, leaseUntil: number }): Promise<void> {
    this.stmts.started.run(s.startedAt, s.marker, s.sessionId, s.workingDirectory, s.owner, s.leaseUntil, id)
  }

  async markFinished (id: string, result: RunResult, endedAt: number): Promise<void> {
    // Recorded first, written with the events: if the disk is full, the next flush tries again.
    this.pendingFinishes.set(id, { result, endedAt })
    this.flushWhenDue()
  }

  async renewLeases (owner: string, leaseUntil: number): Promise<void> {
    this.stmts.renew.run(leaseUntil, owner)
  }

  async getRun (id: string): Promise<RunRecord | undefined> {
    const row = this.stmts.get.get(id) as RunRow | undefined
    if (row === undefined) return undefined
    const record = toRecord(row)
    // An end not yet written (full disk) is the truth all the same.
    const f = this.pendingFinishes.get(id)
    return f === undefined ? record : { ...record, status: f.result.status, endedAt: f.endedAt, result: f.result, spec: null }
  }

  async leftovers (owner: string, now: number): Promise<{ running: RunRecord[], queued: RunRecord[] }> {
    return {
      running: (this.stmts.leftoverRunning.all(owner, now) as RunRow[]).map(toRecord),
      queued: (this.stmts.byStatus.all('queued') as RunRow[]).map(toRecord)
    }
  }

  /** Newest first; `before` is the `rowid` of the last run of the previous page. */
  async listRuns (filter: RunFilter): Promise<RunRecord[]> {
    const where: string[] = []
    const args: unknown[] = []
    if (filter.status !== undefined) { where.push('status = ?'); args.push(filter.status) }
    if (filter.sessionId !== undefined) { where.push('session_id = ?'); args.push(filter.sessionId) }
    if (filter.keyName !== undefined) { where.push('key_name = ?'); args.push(filter.keyName) }
    if (filter.before !== undefined) { where.push('rowid < ?'); args.push(filter.before) }
    const sql = `SELECT rowid, * FROM runs ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY rowid DESC LIMIT ?`
    return (this.db.prepare(sql).all(...args, filter.limit) as RunRow[]).map(toRecord)
  }

  /** Queue an event for the log; written with the next batch. */
  appendEvent (runId: string, seq: number, type: string, data: string): void {
    this.pending.push({ runId, seq, type, data })
    this.pendingBytes += data.length
    // While writes fail, the timer retries when due: appends do not hammer a full disk.
    if ((this.pending.length >= this.flushMaxEvents || this.pendingBytes >= this.flushMaxBytes) && this.retry.due()) {
      try {
        this.flushNow()
      } catch {
        // Kept for the next attempt; an append never throws.
      }
    }
  }

  /**
   * Events of a run with `seq > after`, in order, unflushed ones included: at most `limit`, and
   * no more than `maxBytes` of data (but always at least one event), so a page of big events
   * stays small.
   */
  async eventsAfter (runId: string, after: number, limit: number, maxBytes = Number.POSITIVE_INFINITY): Promise<StoredEvent[]> {
    return this.eventsAfterNow(runId, after, limit, maxBytes)
  }

  private eventsAfterNow (runId: string, after: number, limit: number, maxBytes: number): StoredEvent[] {
    return pageOfEvents(this.stmts.eventsAfter.iterate(runId, after, limit) as IterableIterator<StoredEvent>, this.pending.filter(e => e.runId === runId), after, limit, maxBytes)
  }

  /** The highest event seq of a run (0 when none). */
  async lastSeq (runId: string): Promise<number> {
    let seq = (this.stmts.lastSeq.get(runId) as { seq: number | null }).seq ?? 0
    for (const e of this.pending) if (e.runId === runId && e.seq > seq) seq = e.seq
    return seq
  }

  async flush (): Promise<void> {
    this.flushWhenDue()
  }

  /** Write now, unless writes fail and the next attempt is not due: then fail at once, untried. */
  private flushWhenDue (): void {
    if (!this.retry.due()) throw this.retry.lastError ?? new Error('the event log cannot be written now')
    this.flushNow()
  }

  /**
   * Write the waiting events in one transaction, then the run ends that could not be written
   * before (a full disk): both are kept, in order, until a write succeeds.
   */
  private flushNow (): void {
    try {
      if (this.pending.length > 0) {
        const batch = this.pending
        this.pending = []
        this.pendingBytes = 0
        try {
          this.writeBatch(batch)
        } catch (err) {
          // Keep them (in order, ahead of newer ones) for the next attempt.
          this.pending = batch.concat(this.pending)
          for (const e of batch) this.pendingBytes += e.data.length
          throw err
        }
      }
      for (const [id, f] of this.pendingFinishes) {
        this.stmts.finished.run(f.result.status, f.endedAt, JSON.stringify(f.result), id)
        this.stmts.touchSessionOfRun.run(f.endedAt, id)
        this.pendingFinishes.delete(id)
      }
      this.retry.succeeded()
    } catch (err) {
      this.retry.failed(err as Error)
      throw err
    }
  }

  private readonly writeBatch = (batch: Array<{ runId: string, seq: number, type: string, data: string }>): void => {
    this.db.transaction(() => {
      for (const e of batch) this.stmts.event.run(e.runId, e.seq, e.type, e.data)
    })()
  }

  /**
   * Retention: delete finished runs (and their events) older than `maxAgeMs`, and the oldest
   * finished runs beyond `maxRuns`. Queued and running runs are never deleted.
   */
  async prune (opts: { maxAgeMs: number, maxRuns: number, now?: number }): Promise<number> {
    const now = opts.now ?? Date.now()
    const finished = "status NOT IN ('queued', 'running')"
    const old = this.db.prepare(`SELECT id FROM runs WHERE ${finished} AND created_at < ?`).all(now - opts.maxAgeMs) as Array<{ id: string }>
    const excess = this.db.prepare(`SELECT id FROM runs WHERE ${finished} ORDER BY rowid DESC LIMIT -1 OFFSET ?`).all(opts.maxRuns) as Array<{ id: string }>
    const ids = new Set([...old, ...excess].map(r => r.id))
    this.db.transaction(() => {
      for (const id of ids) {
        this.stmts.deleteEvents.run(id)
        this.stmts.deleteDeliveries.run(id)
        this.stmts.deleteWebhooks.run(id)
        this.stmts.deleteApprovals.run(id)
        this.stmts.deleteRun.run(id)
      }
    })()
    return ids.size
  }

  async spendSince (sinceMs: number): Promise<Map<string, number>> {
    const rows = this.stmts.spendSince.all(sinceMs) as Array<{ key_name: string, usd: number }>
    return new Map(rows.map(r => [r.key_name, r.usd]))
  }

  async sessionOwners (): Promise<Map<string, string | null>> {
    const rows = this.stmts.sessionOwners.all() as Array<{ id: string, key_name: string | null }>
    return new Map(rows.map(r => [r.id, r.key_name]))
  }

  async insertSession (s: NewSession): Promise<void> {
    this.stmts.session.run(namedSession(s))
  }

  async getSession (id: string): Promise<SessionRecord | undefined> {
    const row = this.stmts.getSession.get(id) as SessionRow | undefined
    return row === undefined ? undefined : toSession(row)
  }

  async listSessions (filter: SessionFilter): Promise<SessionRecord[]> {
    const where = ['deleted_at IS NULL']
    const args: unknown[] = []
    if (filter.keyName !== undefined) { where.push('key_name IS ?'); args.push(filter.keyName) }
    if (filter.workingDirectory !== undefined) { where.push('working_directory = ?'); args.push(filter.workingDirectory) }
    if (filter.before !== undefined) { where.push('(updated_at, id) < (?, ?)'); args.push(filter.before.updatedAt, filter.before.id) }
    const sql = `SELECT ${SESSION_COLUMNS} FROM sessions s WHERE ${where.join(' AND ')} ORDER BY updated_at DESC, id DESC LIMIT ?`
    return (this.db.prepare(sql).all(...args, filter.limit) as SessionRow[]).map(toSession)
  }

  async updateSession (id: string, change: { title?: string | null, updatedAt?: number, deletedAt?: number }): Promise<void> {
    const sets: string[] = []
    const args: unknown[] = []
    if (change.title !== undefined) { sets.push('title = ?'); args.push(change.title) }
    if (change.updatedAt !== undefined) { sets.push('updated_at = MAX(updated_at, ?)'); args.push(change.updatedAt) }
    if (change.deletedAt !== undefined) { sets.push('deleted_at = ?'); args.push(change.deletedAt) }
    if (sets.length === 0) return
    this.db.prepare(`UPDATE sessions SET ${sets.join(', ')} WHERE id = ?`).run(...args, id)
  }

  async recordDelivery (runId: string, d: WebhookDelivery): Promise<void> {
    this.stmts.delivery.run(runId, d.deliveryId ?? '', d.event ?? 'run.finished', d.attempt, d.attemptedAt, d.url, d.statusCode, d.error, d.durationMs)
  }

  async deliveries (runId: string): Promise<WebhookDelivery[]> {
    return (this.stmts.deliveries.all(runId) as DeliveryRow[]).map(toDelivery)
  }

  async queueWebhook (w: PendingWebhook): Promise<void> {
    this.stmts.queueWebhook.run(w.id, w.runId, w.event, w.url, w.body, w.attempt, w.dueAt)
  }

  async webhookDone (id: string): Promise<void> {
    this.stmts.webhookDone.run(id)
  }

  async pendingWebhooks (): Promise<PendingWebhook[]> {
    return (this.stmts.pendingWebhooks.all() as OutboxRow[]).map(toPending)
  }

  async saveApproval (a: ApprovalRecord): Promise<void> {
    this.stmts.saveApproval.run(a.id, a.runId, a.keyName, a.status, a.createdAt, JSON.stringify(a))
  }

  async getApproval (id: string): Promise<ApprovalRecord | undefined> {
    const row = this.stmts.getApproval.get(id) as { record: string } | undefined
    return row === undefined ? undefined : JSON.parse(row.record) as ApprovalRecord
  }

  async listApprovals (filter: { runId?: string, keyName?: string, status?: ApprovalRecord['status'], limit: number }): Promise<ApprovalRecord[]> {
    const where: string[] = []
    const args: unknown[] = []
    if (filter.runId !== undefined) { where.push('run_id = ?'); args.push(filter.runId) }
    if (filter.keyName !== undefined) { where.push('key_name = ?'); args.push(filter.keyName) }
    if (filter.status !== undefined) { where.push('status = ?'); args.push(filter.status) }
    const sql = `SELECT record FROM approvals ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY created_at, rowid LIMIT ?`
    return (this.db.prepare(sql).all(...args, filter.limit) as Array<{ record: string }>).map(r => JSON.parse(r.record) as ApprovalRecord)
  }

  async close (): Promise<void> {
    if (!this.db.open) return
    clearInterval(this.timer)
    try {
      this.flushNow()
    } finally {
      this.db.close()
      await this.checkpointer?.close()
    }
  }
}
