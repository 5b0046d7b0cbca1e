import { decideAdmission, type AdmissionRequest } from '../domain/admission.js'
import { Scheduler, type Ticket } from './scheduler.js'
import { SessionLedger } from './session-ledger.js'
import { utcDay } from '../domain/keys.js'

/**
 * Admission on one machine: the rules (`decideAdmission`) over in-memory counters, one synchronous
 * decision per run, taken and recorded in the same step, so nothing can slip between a check and
 * the enqueue: the server is not shutting down; the
 * sessions the run continues belong to its key (and a new one becomes its key's at once); the
 * key has a free slot (`max_concurrent_runs`) and budget left today (`daily_budget_usd`); and the
 * run can start now or wait in the queue (`MAX_CONCURRENT_RUNS`, `MAX_QUEUED_RUNS`), behind the
 * earlier runs of its session.
 */
export class Admission {
  private readonly scheduler: Scheduler
  private readonly liveByKey = new Map<string, number>()
  /** Sessions that queued or running forks read from (their runs write to other sessions). */
  private readonly forkSources = new Map<string, number>()
  private spend = { dayStart: 0, byKey: new Map<string, number>() }
  private closed = false

  constructor (
    opts: { maxConcurrent: number, maxQueued: number },
    private readonly now: () => number = Date.now,
    /** Who owns each session, and which are being deleted (shared with the rest of the engine). */
    readonly sessions: SessionLedger = new SessionLedger()
  ) {
    this.scheduler = new Scheduler(opts.maxConcurrent, opts.maxQueued)
  }

  /** What the store knows at start: who owns which session, and what each key spent today. */
  load (state: { sessionOwners?: Map<string, string | null>, spentToday: Map<string, number> }): void {
    if (state.sessionOwners !== undefined) this.sessions.load(state.sessionOwners)
    this.spend = { dayStart: utcDay(this.now()).start, byKey: new Map(state.spentToday) }
  }

  /** The day's start for spending, from the same clock (for `spendSince` at start). */
  today (): number {
    return utcDay(this.now()).start
  }

  /**
   * Admit a run or throw why not (`ShuttingDown`, `SessionForbidden`, `KeyConcurrencyExceeded`,
   * `BudgetExceeded`, `CapacityExceeded`). On success everything is recorded before returning:
   * the key's slot, the session's owner, the run's place in the queue. `start` is called when it
   * may run; `ticket.release()` gives all of it back.
   */
  admit (req: AdmissionRequest, start: () => void): Ticket {
    const key = req.key
    decideAdmission(req, {
      closing: this.closed,
      held: req.claims.filter(s => this.sessions.isHeld(s)),
      owners: new Map(req.claims.filter(s => this.sessions.knows(s)).map(s => [s, this.sessions.ownerOf(s) ?? null])),
      keyLive: key === null ? 0 : this.liveByKey.get(key.name) ?? 0,
      keySpent: key === null ? 0 : this.spentToday(key.name),
      capacity: this.scheduler.capacity(req.sessionId),
      scope: '',
      now: this.now()
    })
    const ticket = this.scheduler.enter(req.sessionId, start)
    return this.recorded(req.sessionId, key?.name ?? null, ticket, req.newSessionOwner, req.claims.filter(c => c !== req.sessionId))
  }

  /**
   * Queue again a run that was admitted by a previous process (restart recovery): no limit is
   * checked, its key's slot and session are recorded.
   */
  readmit (sessionId: string, keyName: string | null, start: () => void): Ticket {
    return this.recorded(sessionId, keyName, this.scheduler.enter(sessionId, start))
  }

  /** A run of `keyName` ended having cost `usd`: it counts against the key's budget for today. */
  spent (keyName: string | null, usd: number | null): void {
    if (keyName === null || usd === null || !(usd > 0)) return
    this.rollDay()
    this.spend.byKey.set(keyName, (this.spend.byKey.get(keyName) ?? 0) + usd)
  }

  /** What `keyName` has spent today (UTC). */
  spentToday (keyName: string): number {
    this.rollDay()
    return this.spend.byKey.get(keyName) ?? 0
  }

  /** Runs of a key queued or running now. */
  liveRunsOf (keyName: string): number {
    return this.liveByKey.get(keyName) ?? 0
  }

  /** Whether a session has a run queued or running, or one that forks it. */
  hasRuns (sessionId: string): boolean {
    return this.scheduler.hasRuns(sessionId) || this.forkSources.has(sessionId)
  }

  get active (): number { return this.scheduler.active }
  get queued (): number { return this.scheduler.queued }

  /** Admit nothing more and start nothing more (shutdown); queued runs stay queued. */
  close (): void {
    this.closed = true
    this.scheduler.pause()
  }

  private recorded (sessionId: string, keyName: string | null, ticket: Ticket, newSessionOwner?: string, sources: string[] = []): Ticket {
    this.sessions.adopt(sessionId, newSessionOwner ?? keyName)
    if (keyName !== null) this.liveByKey.set(keyName, (this.liveByKey.get(keyName) ?? 0) + 1)
    for (const s of sources) this.forkSources.set(s, (this.forkSources.get(s) ?? 0) + 1)
    let released = false
    return {
      position: () => ticket.position(),
      release: () => {
        if (released) return
        released = true
        if (keyName !== null) {
          const n = (this.liveByKey.get(keyName) ?? 1) - 1
          if (n <= 0) this.liveByKey.delete(keyName)
          else this.liveByKey.set(keyName, n)
        }
        for (const s of sources) {
          const n = (this.forkSources.get(s) ?? 1) - 1
          if (n <= 0) this.forkSources.delete(s)
          else this.forkSources.set(s, n)
        }
        ticket.release()
      }
    }
  }

  private rollDay (): void {
    const today = utcDay(this.now()).start
    if (today !== this.spend.dayStart) this.spend = { dayStart: today, byKey: new Map() }
  }
}
