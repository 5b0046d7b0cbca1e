import { BudgetExceeded, CapacityExceeded, KeyConcurrencyExceeded, SessionBusy, SessionForbidden, ShuttingDown, withProblem } from './errors.js'
import { utcDay, type KeyLimits } from './keys.js'

/** A run asking to be admitted. */
export interface AdmissionRequest {
  /** The session the run writes to (new, resumed, or a fork's new id). */
  sessionId: string
  /** Sessions whose owner must be the run's key: the one it continues, and the one it forks. */
  claims: string[]
  /** null with auth off: no per-key limits, and sessions owned by no key. */
  key: KeyLimits | null
  /** Who a new session becomes owned by, when not the key itself (where its transcript lives). */
  newSessionOwner?: string
}

/** Whether a run could start now or wait in the queue, and if not, what the queue looks like. */
export type Capacity =
  | { room: true }
  | {
    room: false
    running: number
    queued: number
    /** The settings that make it full, as the refusal names them. */
    limits: string
    retryAfter: number
  }

/**
 * What admission decides on. On one machine the engine's counters give these; in a cluster the
 * store reads them in SQL, under the advisory locks of the key and the sessions, in the
 * transaction that records the run. Either way the decision is `decideAdmission`'s.
 */
export interface AdmissionFacts {
  /** Nothing more is admitted: the server is shutting down. */
  closing: boolean
  /** Claimed sessions being deleted now. */
  held: string[]
  /** The owner of each claimed session that has one (a session not listed is new). */
  owners: Map<string, string | null>
  /** The key's runs queued or running (read only when the key has a limit). */
  keyLive: number
  /** What the key spent since the start of the UTC day (read only when it has a budget). */
  keySpent: number
  capacity: Capacity
  /** Where the counts are taken: '' on one machine, ' in the cluster' in a cluster. */
  scope: string
  now: number
}

/**
 * The admission rules, once, for one machine and a cluster alike. Throws why a run may not be
 * admitted: `ShuttingDown`, `SessionBusy` (a session being deleted), `SessionForbidden` (another
 * key's session), `KeyConcurrencyExceeded` (`max_concurrent_runs`), `BudgetExceeded`
 * (`daily_budget_usd`), `CapacityExceeded` (`MAX_CONCURRENT_RUNS` + `MAX_QUEUED_RUNS`). Returns
 * when it may: the caller records it in the same step.
 */
export function decideAdmission (req: Pick<AdmissionRequest, 'claims' | 'key'>, facts: AdmissionFacts): void {
  if (facts.closing) throw new ShuttingDown('the server is shutting down; retry in a moment')
  for (const session of req.claims) if (facts.held.includes(session)) throw new SessionBusy(`session ${session} is being deleted`)
  const key = req.key
  // Auth off (no key) and admin keys may continue any session.
  if (key !== null && key.anySession !== true) {
    for (const session of req.claims) {
      const owner = facts.owners.get(session)
      if (owner !== undefined && owner !== key.name) throw new SessionForbidden(`session ${session} belongs to another key`)
    }
  }
  if (key?.maxConcurrentRuns !== undefined && facts.keyLive >= key.maxConcurrentRuns) {
    throw withProblem(new KeyConcurrencyExceeded(`the key ${key.name} has ${facts.keyLive} runs queued or running${facts.scope}, its limit (max_concurrent_runs=${key.maxConcurrentRuns}); retry when one has ended`), { retryAfter: 5 })
  }
  if (key?.dailyBudgetUsd !== undefined && facts.keySpent >= key.dailyBudgetUsd) {
    throw withProblem(new BudgetExceeded(`the key ${key.name} has spent $${facts.keySpent.toFixed(4)} today (UTC), its daily budget of $${key.dailyBudgetUsd}; it resets at midnight UTC`), {
      retryAfter: utcDay(facts.now).secondsLeft,
      problem: { spent_usd: facts.keySpent, daily_budget_usd: key.dailyBudgetUsd }
    })
  }
  const c = facts.capacity
  if (!c.room) {
    throw withProblem(new CapacityExceeded(`capacity full: ${c.running} runs running and ${c.queued} queued${facts.scope} (${c.limits}); retry later`), { retryAfter: c.retryAfter })
  }
}
