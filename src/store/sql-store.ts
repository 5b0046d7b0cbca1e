import type { RunResult } from '../domain/run.js'
import type { ApprovalRecord, NewRun, NewSession, PendingWebhook, RunFilter, RunRecord, SessionFilter, SessionRecord, StoredEvent, WebhookDelivery } from '../domain/records.js'
import { EventBuffer, type Batch, type BufferOptions, type RunEnd } from './event-buffer.js'
import { sessionOfRun, sessionValues, toDelivery, toPending, toRecord, toSession, type DeliveryRow, type OutboxRow, type RunRow, type SessionRow } from './rows.js'
import { approvalsPage, runsPage, runValues, sessionChange, sessionsPage, statements, type Dialect, type Query, type Statements } from './sql.js'
import { ClaimLost, type RunStore } from './store.js'

/** What a SQL engine gives the store: statements with `$1`, `$2`, ... arguments (see `sql.ts`). */
export interface SqlDatabase {
  /** The rows a statement returns. */
  all: <T>(text: string, values?: unknown[]) => Promise<T[]>
  /** Run a statement: how many rows it changed. */
  run: (text: string, values?: unknown[]) => Promise<number>
  /** Run statements in one transaction, in order. */
  atomically: (queries: Query[]) => Promise<void>
  /**
   * The rows of a statement one at a time, read synchronously as they are consumed (SQLite): a page
   * of events stops reading at its byte limit instead of loading up to `limit` large rows.
   */
  iterate?: <T>(text: string, values?: unknown[]) => Iterable<T>
}

/** The statements that record a new run (queued) and its session. */
export function insertQueries (q: Statements, r: NewRun): Query[] {
  return [
    { text: q.insertRun, values: runValues(r) },
    { text: q.sessionOfRun, values: sessionValues(sessionOfRun(r)) }
  ]
}

/** The statements that write a run's end (`Statements.end`, and its session's activity). */
export function endQueries (q: Statements, e: RunEnd): Query[] {
  return [
    { text: q.end, values: [e.status, e.endedAt, e.result, e.runId] },
    { text: q.touchSessionOfRun, values: [e.endedAt, e.runId] }
  ]
}

/**
 * `RunStore` over SQL, once for every engine: the rules of `store.ts` are kept here, the event log
 * buffered by `EventBuffer`. A backend gives its dialect, its `SqlDatabase`, how it writes a batch
 * of events and run ends (`writeBatch`), and how it lets go of its database (`release`).
 */
export abstract class SqlRunStore implements RunStore {
  protected readonly q: Statements
  protected readonly buffer: EventBuffer
  protected abstract readonly sql: SqlDatabase
  private closed = false

  constructor (private readonly dialect: Dialect, opts: BufferOptions) {
    this.q = statements(dialect)
    this.buffer = new EventBuffer(batch => this.writeBatch(batch), opts)
  }

  /**
   * Write a batch in one transaction (see `Batch`): synchronously, returning nothing, or returning
   * the promise of the commit. `endQueries` writes each end.
   */
  protected abstract writeBatch (batch: Batch): void | Promise<void>
  /** Let go of the database (after the last write). */
  protected abstract release (): Promise<void>

  /** Answers, and the last write went through (a full disk makes the store unavailable until one does). */
  async ping (): Promise<void> {
    await this.sql.all(this.q.ping)
    this.buffer.check()
  }

  async insertRun (r: NewRun): Promise<void> {
    await this.sql.atomically(insertQueries(this.q, r))
  }

  async markStarted (id: string, s: { startedAt: number, marker: string, sessionId: string, workingDirectory: string, owner: string, leaseUntil: number }): Promise<void> {
    const started = await this.sql.run(this.q.start, [s.startedAt, s.marker, s.sessionId, s.workingDirectory, s.owner, s.leaseUntil, id])
    if (started === 0 && (await this.sql.all(this.q.runExists, [id])).length > 0) {
      throw new ClaimLost(`run ${id} is no longer this instance's to start`)
    }
  }

  async markFinished (id: string, result: RunResult, endedAt: number): Promise<void> {
    await this.buffer.finish(id, result, endedAt)
  }

  async renewLeases (owner: string, leaseUntil: number): Promise<void> {
    await this.sql.run(this.q.renewLeases, [leaseUntil, owner])
  }

  async getRun (id: string): Promise<RunRecord | undefined> {
    const [row] = await this.sql.all<RunRow>(this.q.getRun, [id])
    return row === undefined ? undefined : this.buffer.withEnd(toRecord(row))
  }

  async listRuns (filter: RunFilter): Promise<RunRecord[]> {
    // Read your writes: a run read back as ended is listed as ended too, once its end is written
    // (only ends are waited for: a list never waits on the event log's writes).
    if (this.buffer.endsWaiting) await this.buffer.settled()
    const { text, values } = runsPage(this.dialect, filter)
    return this.buffer.withEnds((await this.sql.all<RunRow>(text, values)).map(toRecord), filter.status)
  }

  async leftovers (owner: string, now: number): Promise<{ running: RunRecord[], queued: RunRecord[] }> {
    return {
      running: (await this.sql.all<RunRow>(this.q.leftoverRunning, [owner, now])).map(toRecord),
      queued: (await this.sql.all<RunRow>(this.q.queued)).map(toRecord)
    }
  }

  appendEvent (runId: string, seq: number, type: string, data: string): void {
    this.buffer.append(runId, seq, type, data)
  }

  async flush (): Promise<void> {
    await this.buffer.flush()
  }

  async eventsAfter (runId: string, after: number, limit: number, maxBytes = Number.POSITIVE_INFINITY): Promise<StoredEvent[]> {
    const values = [runId, after, limit]
    const iterate = this.sql.iterate
    return await this.buffer.page(runId, after, limit, maxBytes, iterate !== undefined
      ? () => iterate<StoredEvent>(this.q.eventsAfter, values)
      : async () => await this.sql.all<StoredEvent>(this.q.eventsAfter, values))
  }

  async lastSeq (runId: string): Promise<number> {
    const [row] = await this.sql.all<{ seq: number | null }>(this.q.lastSeq, [runId])
    return this.buffer.lastSeq(runId, row?.seq ?? 0)
  }

  /** Retention: finished runs (with their events, deliveries, webhooks and approvals); never queued or running ones. */
  async prune (opts: { maxAgeMs: number, maxRuns: number, now?: number }): Promise<number> {
    const now = opts.now ?? Date.now()
    const ids = (await this.sql.all<{ id: string }>(this.q.prunable, [now - opts.maxAgeMs, opts.maxRuns])).map(r => r.id)
    if (ids.length > 0) await this.sql.atomically(this.q.prune.map(text => ({ text, values: [ids] })))
    return ids.length
  }

  async spendSince (sinceMs: number): Promise<Map<string, number>> {
    const rows = await this.sql.all<{ key_name: string, usd: number }>(this.q.spendSince, [sinceMs])
    return new Map(rows.map(r => [r.key_name, Number(r.usd)]))
  }

  async sessionOwners (): Promise<Map<string, string | null>> {
    const rows = await this.sql.all<{ id: string, key_name: string | null }>(this.q.sessionOwners)
    return new Map(rows.map(r => [r.id, r.key_name]))
  }

  async insertSession (s: NewSession): Promise<void> {
    await this.sql.run(this.q.insertSession, sessionValues(s))
  }

  async getSession (id: string): Promise<SessionRecord | undefined> {
    const [row] = await this.sql.all<SessionRow>(this.q.getSession, [id])
    return row === undefined ? undefined : toSession(row)
  }

  async listSessions (filter: SessionFilter): Promise<SessionRecord[]> {
    const { text, values } = sessionsPage(filter)
    return (await this.sql.all<SessionRow>(text, values)).map(toSession)
  }

  async updateSession (id: string, change: { title?: string | null, updatedAt?: number, deletedAt?: number }): Promise<void> {
    const query = sessionChange(this.dialect, id, change)
    if (query !== undefined) await this.sql.run(query.text, query.values)
  }

  async recordDelivery (runId: string, d: WebhookDelivery): Promise<void> {
    await this.sql.run(this.q.recordDelivery, [runId, d.deliveryId ?? '', d.event ?? 'run.finished', d.attempt, d.attemptedAt, d.url, d.statusCode, d.error, d.durationMs])
  }

  async deliveries (runId: string): Promise<WebhookDelivery[]> {
    return (await this.sql.all<DeliveryRow>(this.q.deliveries, [runId])).map(toDelivery)
  }

  async queueWebhook (w: PendingWebhook): Promise<void> {
    await this.sql.run(this.q.queueWebhook, [w.id, w.runId, w.event, w.url, w.body, w.attempt, w.dueAt])
  }

  async webhookDone (id: string): Promise<void> {
    await this.sql.run(this.q.webhookDone, [id])
  }

  async pendingWebhooks (): Promise<PendingWebhook[]> {
    return (await this.sql.all<OutboxRow>(this.q.pendingWebhooks)).map(toPending)
  }

  async saveApproval (a: ApprovalRecord): Promise<void> {
    await this.sql.run(this.q.saveApproval, [a.id, a.runId, a.keyName, a.status, a.createdAt, JSON.stringify(a)])
  }

  async getApproval (id: string): Promise<ApprovalRecord | undefined> {
    const [row] = await this.sql.all<{ record: string }>(this.q.getApproval, [id])
    return row === undefined ? undefined : JSON.parse(row.record) as ApprovalRecord
  }

  async listApprovals (filter: { runId?: string, keyName?: string, status?: ApprovalRecord['status'], limit: number }): Promise<ApprovalRecord[]> {
    const { text, values } = approvalsPage(filter)
    return (await this.sql.all<{ record: string }>(text, values)).map(r => JSON.parse(r.record) as ApprovalRecord)
  }

  /** Flush (once more even while writes fail) and let go. Idempotent. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    try {
      await this.buffer.close()
    } finally {
      await this.release()
    }
  }
}
