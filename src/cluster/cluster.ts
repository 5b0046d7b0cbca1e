import { randomUUID } from 'node:crypto'
import { hostname } from 'node:os'
import pg from 'pg'
import { BudgetExceeded, CapacityExceeded, DomainError, KeyConcurrencyExceeded, SessionBusy, SessionForbidden, StoreUnavailable, withProblem } from '../domain/errors.js'
import type { KeyLimits } from '../domain/keys.js'
import { utcDay } from '../domain/keys.js'
import { checkRoom, turnBytes, type QueueLimits } from '../domain/messages.js'
import type { UserTurn } from '../domain/run.js'
import { EVENTS_CHANNEL, type PostgresRunStore } from '../store/postgres-store.js'
import { toRecord, type RunRow } from '../store/rows.js'
import type { NewRun, RunRecord } from '../domain/records.js'
import { ClusterEventBus } from './bus.js'
import { PostgresTranscriptStore } from './transcript-store.js'

/** Runs wait here for an instance with a free slot: notified on every insert. */
const QUEUE_CHANNEL = 'ccapi_queue'
/** Requests between instances (cancel, interrupt, messages, approvals) and their replies. */
const CONTROL_CHANNEL = 'ccapi_control'
/** A notification carries at most 8000 bytes: a larger control message goes through this table. */
const NOTIFY_MAX = 7000

interface ControlMessage {
  to: string
  from: string
  id: string
  op: string
  args?: unknown
  /** Replies: */
  ok?: boolean
  value?: unknown
  error?: { code: string, message: string, retryAfter?: number }
}

export interface ClusterOptions {
  url: string
  store: PostgresRunStore
  instanceId: string
  maxConcurrent: number
  /** How often this instance says it is alive, reaps lapsed runs and looks for queued ones. */
  tickMs?: number
  /** An instance silent for this long no longer counts (its runs go when their leases lapse). */
  deadAfterMs?: number
  log: { info: (o: object, m: string) => void, warn: (o: object, m: string) => void, error: (o: object, m: string) => void }
}

/** What a request to another instance asks; the answer is what the handler returns. */
export type ControlHandler = (op: string, args: any) => Promise<unknown>

/** A run this instance claimed from the queue, with the messages that waited for it. */
export interface Claimed {
  record: RunRecord
  messages: Array<{ id: string, turn: UserTurn }>
}

/**
 * This instance's part in a cluster sharing one PostgreSQL database: its heartbeat in
 * `instances`, the shared queue (claims with `FOR UPDATE SKIP LOCKED`, one session's runs in
 * order), admission checked against the whole cluster in one transaction, the reaping of runs
 * whose owner stopped renewing their lease, the live event bus (LISTEN/NOTIFY carrying ids), and
 * requests to the instance that runs a run.
 */
export class ClusterNode {
  readonly bus: ClusterEventBus
  readonly transcripts: PostgresTranscriptStore
  private readonly listener: pg.Client
  private readonly pending = new Map<string, { resolve: (v: unknown) => void, reject: (e: Error) => void, timer: NodeJS.Timeout }>()
  private handler: ControlHandler = async () => { throw new DomainError('run_finished', 'no such run here') }
  private readonly queueListeners = new Set<() => void>()
  private alive = 1
  private timer: NodeJS.Timeout | undefined
  private closed = false
  readonly tickMs: number
  readonly deadAfterMs: number

  constructor (private readonly opts: ClusterOptions) {
    this.tickMs = opts.tickMs ?? 1000
    this.deadAfterMs = opts.deadAfterMs ?? 10_000
    this.listener = new pg.Client({ connectionString: opts.url })
    this.listener.on('error', err => opts.log.error({ err }, 'cluster: the notification connection failed'))
    this.bus = new ClusterEventBus(opts.store, opts.instanceId)
    this.transcripts = new PostgresTranscriptStore(opts.store.pool)
  }

  get instanceId (): string { return this.opts.instanceId }
  /** Instances that heartbeat lately, this one included. */
  get instances (): number { return this.alive }

  /** Join: listen for events, queue and control notifications, and say this instance is alive. */
  async start (onTick: () => void): Promise<void> {
    await this.listener.connect()
    this.listener.on('notification', n => this.onNotification(n.channel, n.payload ?? ''))
    for (const ch of [EVENTS_CHANNEL, QUEUE_CHANNEL, CONTROL_CHANNEL]) await this.listener.query(`LISTEN ${ch}`)
    const now = Date.now()
    await this.opts.store.pool.query(`INSERT INTO instances (id, host, started_at, heartbeat_at, max_concurrent) VALUES ($1, $2, $3, $3, $4)
      ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, max_concurrent = EXCLUDED.max_concurrent, stopped_at = NULL`,
    [this.instanceId, hostname(), now, this.opts.maxConcurrent])
    await this.heartbeat()
    this.timer = setInterval(() => {
      this.heartbeat().catch(err => this.opts.log.warn({ err }, 'cluster: heartbeat failed; will retry'))
      onTick()
    }, this.tickMs)
    this.timer.unref()
  }

  private async heartbeat (): Promise<void> {
    const now = Date.now()
    await this.opts.store.pool.query('UPDATE instances SET heartbeat_at = $1 WHERE id = $2', [now, this.instanceId])
    // Counted as alive for a while longer than a lease: a busy instance late with a heartbeat is still there.
    const { rows } = await this.opts.store.pool.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM instances WHERE stopped_at IS NULL AND heartbeat_at >= $1', [now - Math.max(this.deadAfterMs, 10_000)])
    this.alive = rows[0]?.n ?? 1
  }

  /** Leave: the instance is marked stopped, notifications end. */
  async stop (): Promise<void> {
    if (this.closed) return
    this.closed = true
    clearInterval(this.timer)
    for (const [, p] of this.pending) {
      clearTimeout(p.timer)
      p.reject(new DomainError('shutting_down', 'the server is shutting down'))
    }
    this.pending.clear()
    await this.opts.store.pool.query('UPDATE instances SET stopped_at = $1 WHERE id = $2', [Date.now(), this.instanceId]).catch(() => {})
    await this.listener.end().catch(() => {})
  }

  /** Call `fn` when a run may be waiting in the queue (notified, or on every tick). */
  onQueue (fn: () => void): void {
    this.queueListeners.add(fn)
  }

  /** Answer requests from other instances about the runs this one holds. */
  handle (handler: ControlHandler): void {
    this.handler = handler
  }

  /**
   * Admission for the whole cluster, in one transaction with the run's insert: the key's and the
   * sessions' advisory locks are taken first, so two instances admitting at once see each other.
   * The sessions the run continues must be its key's (or free), the key must have a free slot
   * and budget left today, and the queue must have room (`maxQueued` beyond the cluster's free slots).
   */
  async admit (run: NewRun, req: { key: KeyLimits | null, claims: string[], held: (session: string) => boolean, maxQueued: number }): Promise<void> {
    for (const session of req.claims) if (req.held(session)) throw new SessionBusy(`session ${session} is being deleted`)
    await this.opts.store.admitRun(run, async c => {
      const key = req.key
      const locks = [...(key !== null ? [`key:${key.name}`] : []), ...req.claims.map(s => `session:${s}`)].sort()
      for (const l of locks) await c.query('SELECT pg_advisory_xact_lock(hashtext($1))', [l])
      if (key !== null && key.anySession !== true) {
        const { rows } = await c.query<{ id: string, key_name: string | null }>('SELECT id, key_name FROM sessions WHERE id = ANY($1)', [req.claims])
        for (const r of rows) if (r.key_name !== key.name) throw new SessionForbidden(`session ${r.id} belongs to another key`)
      }
      if (key?.maxConcurrentRuns !== undefined) {
        const { rows } = await c.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM runs WHERE key_name = $1 AND status IN (\'queued\', \'running\')', [key.name])
        const live = rows[0]?.n ?? 0
        if (live >= key.maxConcurrentRuns) {
          throw withProblem(new KeyConcurrencyExceeded(`the key ${key.name} has ${live} runs queued or running in the cluster, its limit (max_concurrent_runs=${key.maxConcurrentRuns}); retry when one has ended`), { retryAfter: 5 })
        }
      }
      if (key?.dailyBudgetUsd !== undefined) {
        const day = utcDay(Date.now())
        const { rows } = await c.query<{ usd: number }>('SELECT COALESCE(SUM((result::jsonb->>\'total_cost_usd\')::float8), 0) AS usd FROM runs WHERE key_name = $1 AND ended_at >= $2', [key.name, day.start])
        const spent = Number(rows[0]?.usd ?? 0)
        if (spent >= key.dailyBudgetUsd) {
          throw withProblem(new BudgetExceeded(`the key ${key.name} has spent $${spent.toFixed(4)} today (UTC), its daily budget of $${key.dailyBudgetUsd}; it resets at midnight UTC`), {
            retryAfter: day.secondsLeft,
            problem: { spent_usd: spent, daily_budget_usd: key.dailyBudgetUsd }
          })
        }
      }
      const { rows } = await c.query<{ queued: number, slots: number, busy: number }>(`SELECT
        (SELECT COUNT(*)::int FROM runs WHERE status = 'queued') AS queued,
        (SELECT COALESCE(SUM(max_concurrent), 0)::int FROM instances WHERE stopped_at IS NULL AND heartbeat_at >= $1) AS slots,
        (SELECT COUNT(*)::int FROM runs WHERE status = 'running') AS busy`, [Date.now() - this.deadAfterMs])
      const { queued, slots, busy } = rows[0]!
      if (queued >= req.maxQueued + Math.max(0, slots - busy)) {
        throw withProblem(new CapacityExceeded(`capacity full: ${busy} runs running and ${queued} queued in the cluster (MAX_CONCURRENT_RUNS=${this.opts.maxConcurrent} on this instance, ${slots} slots in all; MAX_QUEUED_RUNS=${req.maxQueued}); retry later`), { retryAfter: 5 })
      }
    })
    await this.opts.store.pool.query('SELECT pg_notify($1, $2)', [QUEUE_CHANNEL, run.id]).catch(() => {})
  }

  /**
   * Claim the oldest queued run that may start: unclaimed, and the first live run of its session
   * (one session's runs go one at a time, in order, across the cluster). Locked rows are skipped,
   * so instances claiming at once never take the same run. The run stays `queued`, owned by this
   * instance under a lease, until it is marked started.
   */
  async claim (leaseUntil: number): Promise<Claimed | undefined> {
    return await this.opts.store.transaction(async c => {
      const { rows } = await c.query<RunRow>(`UPDATE runs SET owner = $1, lease_until = $2 WHERE id = (
          SELECT r.id FROM runs r WHERE r.status = 'queued' AND r.owner IS NULL
            AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.session_id = r.session_id AND o.rowid < r.rowid AND o.status IN ('queued', 'running'))
          ORDER BY r.rowid LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING *`, [this.instanceId, leaseUntil])
      if (rows[0] === undefined) return undefined
      const record = toRecord(rows[0])
      const msgs = await c.query<{ rowid: number, id: string, turn: string }>('SELECT rowid, id, turn FROM queued_messages WHERE run_id = $1 ORDER BY rowid', [record.id])
      if (msgs.rows.length > 0) await c.query('DELETE FROM queued_messages WHERE run_id = $1', [record.id])
      return { record, messages: msgs.rows.map(m => ({ id: m.id, turn: JSON.parse(m.turn) as UserTurn })) }
    })
  }

  /** Give claimed runs that never started back to the queue (this instance is stopping). */
  async release (runIds: string[]): Promise<void> {
    if (runIds.length === 0) return
    await this.opts.store.pool.query('UPDATE runs SET owner = NULL, lease_until = NULL WHERE id = ANY($1) AND status = \'queued\' AND owner = $2', [runIds, this.instanceId])
    await this.opts.store.pool.query('SELECT pg_notify($1, $2)', [QUEUE_CHANNEL, 'released']).catch(() => {})
  }

  /**
   * Runs whose owner stopped renewing their lease (it died): running ones become this instance's
   * to end as interrupted (returned); claimed ones that never started go back to the queue.
   */
  async reap (now: number, leaseUntil: number): Promise<RunRecord[]> {
    // Only the runs of an instance that is silent too: a busy instance late with a renewal keeps its runs.
    const silent = 'owner NOT IN (SELECT id FROM instances WHERE stopped_at IS NULL AND heartbeat_at >= $2)'
    const back = await this.opts.store.pool.query(`UPDATE runs SET owner = NULL, lease_until = NULL WHERE status = 'queued' AND owner IS NOT NULL AND lease_until < $1 AND ${silent}`, [now, now - this.deadAfterMs])
    if ((back.rowCount ?? 0) > 0) await this.opts.store.pool.query('SELECT pg_notify($1, $2)', [QUEUE_CHANNEL, 'reaped']).catch(() => {})
    const { rows } = await this.opts.store.pool.query<RunRow>(`UPDATE runs SET owner = $1, lease_until = $2 WHERE id IN (
        SELECT id FROM runs WHERE status = 'running' AND (owner IS NULL OR (owner <> $1 AND ${silent.replace('$2', '$4')})) AND (lease_until IS NULL OR lease_until < $3) FOR UPDATE SKIP LOCKED)
      RETURNING *`, [this.instanceId, leaseUntil, now, now - this.deadAfterMs])
    return rows.map(toRecord)
  }

  /**
   * Whether the process of `instanceId` that accepted a run at `since` is gone: the instance
   * stopped, went silent, or has restarted since.
   */
  async processGone (instanceId: string, since: number): Promise<boolean> {
    const { rows } = await this.opts.store.pool.query<{ started_at: number, heartbeat_at: number, stopped_at: number | null }>('SELECT started_at, heartbeat_at, stopped_at FROM instances WHERE id = $1', [instanceId])
    const i = rows[0]
    return i === undefined || i.stopped_at !== null || i.heartbeat_at < Date.now() - this.deadAfterMs || i.started_at > since
  }

  /** Queued runs of `/api/execute*` that `instanceId` accepted: their clients waited on it. */
  async clientRunsOf (instanceId: string): Promise<string[]> {
    const { rows } = await this.opts.store.pool.query<{ id: string }>(`SELECT id FROM runs WHERE status = 'queued' AND owner IS NULL AND cancel_on_disconnect
      AND spec LIKE '%"submittedBy":"' || $1 || '"%' ORDER BY rowid`, [instanceId])
    return rows.map(r => r.id)
  }

  /** Queued runs nobody has claimed whose time limit, counted from submission, has passed. */
  async overdue (now: number): Promise<string[]> {
    const { rows } = await this.opts.store.pool.query<{ id: string }>(`SELECT id FROM runs WHERE status = 'queued' AND owner IS NULL AND spec IS NOT NULL
      AND created_at + (spec::jsonb->>'timeoutS')::bigint * 1000 <= $1 ORDER BY rowid LIMIT 100`, [now])
    return rows.map(r => r.id)
  }

  /** Runs waiting in the shared queue (not yet claimed). */
  async queuedRuns (): Promise<number> {
    const { rows } = await this.opts.store.pool.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM runs WHERE status = \'queued\' AND owner IS NULL')
    return rows[0]?.n ?? 0
  }

  /** A queued run's place in the shared queue (1-based; 1 once claimed and starting), null when it is not queued. */
  async positionOf (runId: string): Promise<number | null> {
    // Claimed by an instance and starting there: next, 1.
    const { rows } = await this.opts.store.pool.query<{ n: number | null }>(`SELECT CASE WHEN r.owner IS NOT NULL THEN 1 ELSE
        (SELECT COUNT(*)::int FROM runs o WHERE o.status = 'queued' AND o.owner IS NULL AND o.rowid <= r.rowid) END AS n
      FROM runs r WHERE r.id = $1 AND r.status = 'queued'`, [runId])
    return rows[0]?.n ?? null
  }

  /** This instance's runs a previous life of it left: running ones (to end) and claimed ones. */
  async leftovers (): Promise<{ running: RunRecord[], claimed: string[] }> {
    const { rows } = await this.opts.store.pool.query<RunRow>('SELECT * FROM runs WHERE owner = $1 AND status IN (\'queued\', \'running\') ORDER BY rowid', [this.instanceId])
    const all = rows.map(toRecord)
    return { running: all.filter(r => r.status === 'running'), claimed: all.filter(r => r.status === 'queued').map(r => r.id) }
  }

  /**
   * End a queued run that no instance has claimed: the returned record when it was (the caller
   * logs its result), undefined when it is claimed, running or over.
   */
  async cancelQueued (runId: string, finish: (c: pg.PoolClient, r: RunRecord) => Promise<void>): Promise<RunRecord | undefined> {
    return await this.opts.store.transaction(async c => {
      const { rows } = await c.query<RunRow>('SELECT * FROM runs WHERE id = $1 AND status = \'queued\' AND owner IS NULL FOR UPDATE', [runId])
      if (rows[0] === undefined) return undefined
      const record = toRecord(rows[0])
      await finish(c, record)
      await c.query('DELETE FROM queued_messages WHERE run_id = $1', [runId])
      return record
    })
  }

  /**
   * Leave a message for a run: kept for its claimer when nobody holds it yet (`queued`), else the
   * instance that holds it (`owner`), or nothing (`finished`).
   */
  async postMessage (runId: string, id: string, turn: UserTurn, limits: QueueLimits): Promise<{ queued: true } | { owner: string } | { finished: true }> {
    return await this.opts.store.transaction(async c => {
      const { rows } = await c.query<{ status: string, owner: string | null }>('SELECT status, owner FROM runs WHERE id = $1 FOR UPDATE', [runId])
      const r = rows[0]
      if (r === undefined || (r.status !== 'queued' && r.status !== 'running')) return { finished: true as const }
      if (r.owner !== null) return { owner: r.owner }
      // The run's row is locked: the count and the insert are one decision, whichever instance posts.
      const size = turnBytes(turn)
      const held = await c.query<{ n: number, bytes: number }>('SELECT COUNT(*)::int AS n, COALESCE(SUM(bytes), 0)::bigint AS bytes FROM queued_messages WHERE run_id = $1', [runId])
      checkRoom(held.rows[0]?.n ?? 0, held.rows[0]?.bytes ?? 0, size, limits)
      await c.query('INSERT INTO queued_messages (run_id, id, turn, bytes) VALUES ($1, $2, $3, $4)', [runId, id, JSON.stringify(turn), size])
      return { queued: true as const }
    })
  }

  /** The instance that holds a run now (null: nobody, it is queued or over). */
  async ownerOf (runId: string): Promise<string | null> {
    const { rows } = await this.opts.store.pool.query<{ owner: string | null }>('SELECT owner FROM runs WHERE id = $1 AND status IN (\'queued\', \'running\')', [runId])
    return rows[0]?.owner ?? null
  }

  /** Ask instance `to` to do `op`; its answer, or its error (a `DomainError` by code). */
  async call (to: string, op: string, args: unknown, timeoutMs = 5000): Promise<unknown> {
    const id = randomUUID()
    const answer = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(withProblem(new StoreUnavailable(`the instance holding the run did not answer within ${timeoutMs} ms; retry`), { retryAfter: 1 }))
      }, timeoutMs)
      this.pending.set(id, { resolve, reject, timer })
    })
    await this.send({ to, from: this.instanceId, id, op, args })
    return await answer
  }

  private async send (m: ControlMessage): Promise<void> {
    let payload = JSON.stringify(m)
    if (Buffer.byteLength(payload) > NOTIFY_MAX) {
      // Too big for a notification: the body waits in a row the receiver takes.
      const ref = randomUUID()
      await this.opts.store.pool.query('INSERT INTO queued_messages (run_id, id, turn) VALUES ($1, $2, $3)', [`control:${ref}`, ref, payload])
      payload = JSON.stringify({ to: m.to, ref })
    }
    await this.opts.store.pool.query('SELECT pg_notify($1, $2)', [CONTROL_CHANNEL, payload])
  }

  private onNotification (channel: string, payload: string): void {
    if (channel === EVENTS_CHANNEL) this.bus.notified(payload)
    else if (channel === QUEUE_CHANNEL) for (const fn of this.queueListeners) fn()
    else if (channel === CONTROL_CHANNEL) void this.onControl(payload)
  }

  private async onControl (payload: string): Promise<void> {
    let m: ControlMessage & { ref?: string }
    try {
      m = JSON.parse(payload)
      if (m.to !== this.instanceId) return
      if (m.ref !== undefined) {
        const { rows } = await this.opts.store.pool.query<{ turn: string }>('DELETE FROM queued_messages WHERE run_id = $1 RETURNING turn', [`control:${m.ref}`])
        if (rows[0] === undefined) return
        m = JSON.parse(rows[0].turn)
      }
    } catch {
      return
    }
    if (m.op === 'reply') {
      const p = this.pending.get(m.id)
      if (p === undefined) return
      this.pending.delete(m.id)
      clearTimeout(p.timer)
      if (m.ok === true) p.resolve(m.value)
      else p.reject(withProblem(new DomainError(m.error?.code ?? 'internal_error', m.error?.message ?? 'failed'), m.error?.retryAfter !== undefined ? { retryAfter: m.error.retryAfter } : {}))
      return
    }
    let reply: ControlMessage
    try {
      reply = { to: m.from, from: this.instanceId, id: m.id, op: 'reply', ok: true, value: await this.handler(m.op, m.args) }
    } catch (err) {
      const code = err instanceof DomainError ? err.code : 'internal_error'
      const retryAfter = err instanceof DomainError ? err.retryAfter : undefined
      reply = { to: m.from, from: this.instanceId, id: m.id, op: 'reply', ok: false, error: { code, message: (err as Error).message, ...(retryAfter !== undefined ? { retryAfter } : {}) } }
    }
    await this.send(reply).catch(err => this.opts.log.warn({ err }, 'cluster: a reply could not be sent'))
  }
}
