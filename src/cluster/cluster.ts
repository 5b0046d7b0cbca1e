import { randomUUID } from 'node:crypto'
import { hostname } from 'node:os'
import { decideAdmission } from '../domain/admission.js'
import { DomainError, StoreUnavailable, withProblem } from '../domain/errors.js'
import { utcDay, type KeyLimits } from '../domain/keys.js'
import { checkRoom, turnBytes, type QueueLimits } from '../domain/messages.js'
import type { RunResult, UserTurn } from '../domain/run.js'
import type { PostgresRunStore } from '../store/postgres-store.js'
import type { Claimed } from '../store/postgres-queue.js'
import type { NewRun, RunRecord } from '../domain/records.js'
import { ClusterEventBus } from './bus.js'
import { PostgresTranscriptStore } from './transcript-store.js'

export type { Claimed } from '../store/postgres-queue.js'

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
  store: PostgresRunStore
  /**
   * Where the notification connection (LISTEN) goes: the store's database by default. A direct
   * address when the store's goes through a pooler in transaction mode, which cannot LISTEN.
   */
  url?: string
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

/**
 * This instance's part in a cluster sharing one PostgreSQL database: its heartbeat, admission
 * against the whole cluster (the rules of `decideAdmission`, on what the store reads under its
 * locks), claims from the shared queue, the reaping of runs whose owner stopped renewing their
 * lease, the live event bus (notifications carrying ids), and requests to the instance that runs
 * a run, with their replies. What it keeps in the database, and how, is the store's
 * (`PostgresRunStore.queue`).
 */
export class ClusterNode {
  readonly bus: ClusterEventBus
  readonly transcripts: PostgresTranscriptStore
  private readonly pending = new Map<string, { resolve: (v: unknown) => void, reject: (e: Error) => void, timer: NodeJS.Timeout }>()
  private handler: ControlHandler = async () => { throw new DomainError('run_finished', 'no such run here') }
  private readonly queueListeners = new Set<() => void>()
  private alive = 1
  private timer: NodeJS.Timeout | undefined
  private unlisten: (() => Promise<void>) | undefined
  private closed = false
  readonly tickMs: number
  readonly deadAfterMs: number

  constructor (private readonly opts: ClusterOptions) {
    this.tickMs = opts.tickMs ?? 1000
    this.deadAfterMs = opts.deadAfterMs ?? 10_000
    this.bus = new ClusterEventBus(opts.store, opts.instanceId)
    this.transcripts = new PostgresTranscriptStore(opts.store.transcripts)
  }

  get instanceId (): string { return this.opts.instanceId }
  /** Instances that heartbeat lately, this one included. */
  get instances (): number { return this.alive }

  private get queue (): PostgresRunStore['queue'] { return this.opts.store.queue }

  /** Join: listen for events, queue and control notifications, and say this instance is alive. */
  async start (onTick: () => void): Promise<void> {
    this.unlisten = await this.queue.listen({
      events: payload => this.bus.notified(payload),
      queue: () => { for (const fn of this.queueListeners) fn() },
      control: payload => { void this.onControl(payload) }
    }, err => this.opts.log.error({ err }, 'cluster: the notification connection failed'), this.opts.url)
    await this.queue.join({ id: this.instanceId, host: hostname(), maxConcurrent: this.opts.maxConcurrent }, Date.now())
    await this.heartbeat()
    this.timer = setInterval(() => {
      this.heartbeat().catch(err => this.opts.log.warn({ err }, 'cluster: heartbeat failed; will retry'))
      onTick()
    }, this.tickMs)
    this.timer.unref()
  }

  private async heartbeat (): Promise<void> {
    const now = Date.now()
    // Counted as alive for a while longer than a lease: a busy instance late with a heartbeat is still there.
    this.alive = await this.queue.heartbeat(this.instanceId, now, now - Math.max(this.deadAfterMs, 10_000))
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
    await this.queue.leave(this.instanceId, Date.now()).catch(() => {})
    await this.unlisten?.()
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
   * Admission for the whole cluster, in one transaction with the run's insert: the store takes the
   * key's and the sessions' advisory locks and reads what the rules decide on (`decideAdmission`):
   * the sessions' owners, the key's live runs and spending today, and the queue, which has room
   * for `maxQueued` runs beyond the cluster's free slots. The caller checks for shutdown.
   */
  async admit (run: NewRun, req: { key: KeyLimits | null, claims: string[], held: (session: string) => boolean, maxQueued: number }): Promise<void> {
    const now = Date.now()
    const key = req.key
    const day = utcDay(now)
    await this.queue.admit(run, {
      key: key?.name ?? null,
      sessions: req.claims,
      keyLive: key?.maxConcurrentRuns !== undefined,
      ...(key?.dailyBudgetUsd !== undefined ? { spentSince: day.start } : {}),
      aliveSince: now - this.deadAfterMs
    }, counts => {
      const full = counts.queued >= req.maxQueued + Math.max(0, counts.slots - counts.running)
      decideAdmission(req, {
        closing: false,
        held: req.claims.filter(s => req.held(s)),
        owners: counts.owners,
        keyLive: counts.keyLive,
        keySpent: counts.keySpent,
        capacity: full
          ? { room: false, running: counts.running, queued: counts.queued, limits: `MAX_CONCURRENT_RUNS=${this.opts.maxConcurrent} on this instance, ${counts.slots} slots in all; MAX_QUEUED_RUNS=${req.maxQueued}`, retryAfter: 5 }
          : { room: true },
        scope: ' in the cluster',
        now
      })
    })
  }

  /**
   * Claim the oldest queued run that may start (the first live run of its session): it stays
   * `queued`, owned by this instance under a lease, until it is marked started.
   */
  async claim (leaseUntil: number): Promise<Claimed | undefined> {
    return await this.queue.claim(this.instanceId, leaseUntil)
  }

  /** Give claimed runs that never started back to the queue (this instance is stopping). */
  async release (runIds: string[]): Promise<void> {
    await this.queue.release(this.instanceId, runIds)
  }

  /**
   * Runs whose owner stopped renewing their lease and went silent (it died): running ones become
   * this instance's to end as interrupted (returned); claimed ones that never started go back to
   * the queue.
   */
  async reap (now: number, leaseUntil: number): Promise<RunRecord[]> {
    return await this.queue.reap(this.instanceId, now, leaseUntil, now - this.deadAfterMs)
  }

  /**
   * Whether the process of `instanceId` that accepted a run at `since` is gone: the instance
   * stopped, went silent, or has restarted since.
   */
  async processGone (instanceId: string, since: number): Promise<boolean> {
    const i = await this.queue.instance(instanceId)
    return i === undefined || i.stoppedAt !== null || i.heartbeatAt < Date.now() - this.deadAfterMs || i.startedAt > since
  }

  /** Queued runs of `/api/execute*` that `instanceId` accepted: their clients waited on it. */
  async clientRunsOf (instanceId: string): Promise<string[]> {
    return await this.queue.clientRunsOf(instanceId)
  }

  /** Queued runs nobody has claimed whose time limit, counted from submission, has passed. */
  async overdue (now: number): Promise<string[]> {
    return await this.queue.overdue(now)
  }

  /** Runs waiting in the shared queue (not yet claimed). */
  async queuedRuns (): Promise<number> {
    return await this.queue.waiting()
  }

  /** A queued run's place in the shared queue (1-based; 1 once claimed and starting), null when it is not queued. */
  async positionOf (runId: string): Promise<number | null> {
    return await this.queue.positionOf(runId)
  }

  /** This instance's runs a previous life of it left: running ones (to end) and claimed ones. */
  async leftovers (): Promise<{ running: RunRecord[], claimed: string[] }> {
    const all = await this.queue.heldBy(this.instanceId)
    return { running: all.filter(r => r.status === 'running'), claimed: all.filter(r => r.status === 'queued').map(r => r.id) }
  }

  /**
   * End a queued run that no instance has claimed: the store writes its end (the result `end`
   * gives) and drops its waiting messages in one transaction. Returns the record as it was, the
   * result, and the seq its `result` event takes (the caller appends it); undefined when the run
   * is claimed, running or over.
   */
  async cancelQueued (runId: string, end: (r: RunRecord) => RunResult): Promise<{ record: RunRecord, result: RunResult, seq: number } | undefined> {
    return await this.queue.cancelQueued(runId, end)
  }

  /**
   * Leave a message for a run: kept for its claimer when nobody holds it yet (`queued`, if it fits
   * beside those waiting: `checkRoom`), else the instance that holds it (`owner`), or nothing
   * (`finished`).
   */
  async postMessage (runId: string, id: string, turn: UserTurn, limits: QueueLimits): Promise<{ queued: true } | { owner: string } | { finished: true }> {
    const size = turnBytes(turn)
    return await this.queue.postMessage(runId, { id, turn, bytes: size }, waiting => checkRoom(waiting.messages, waiting.bytes, size, limits))
  }

  /** The instance that holds a run now (null: nobody, it is queued or over). */
  async ownerOf (runId: string): Promise<string | null> {
    return await this.queue.ownerOf(runId)
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
    // The answer may come (over the LISTEN connection) before the NOTIFY's own query returns: it is
    // handled from now on, or a refusal arriving that early would be an unhandled rejection.
    answer.catch(() => {})
    try {
      await this.send({ to, from: this.instanceId, id, op, args })
    } catch (err) {
      const p = this.pending.get(id)
      if (p !== undefined) clearTimeout(p.timer)
      this.pending.delete(id)
      throw err
    }
    return await answer
  }

  private async send (m: ControlMessage): Promise<void> {
    await this.queue.sendControl(m.to, JSON.stringify(m))
  }

  private async onControl (payload: string): Promise<void> {
    const m = await this.queue.receiveControl<ControlMessage>(payload, this.instanceId)
    if (m === undefined) return
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
