import type { RunEvent, RunResult } from '../domain/run.js'
import type { ApprovalRecord, NewRun, NewSession, PendingWebhook, RunFilter, RunRecord, SessionFilter, SessionRecord, StoredEvent, WebhookDelivery } from '../domain/records.js'

/**
 * The run store: what the engine and the API keep about runs, behind one interface that every
 * backend implements (the embedded SQLite one for a single machine; PostgreSQL for a cluster).
 * Every backend passes the same contract test suite (`test/store/contract.ts`).
 *
 * Rules every implementation keeps:
 * - Methods are async; none throws for "not found" (`undefined` or an empty list instead).
 * - `appendEvent` is buffered and never throws: the event is visible to `eventsAfter` and
 *   `lastSeq` of this process at once, and durable after the next `flush()` (which a backend also
 *   runs on its own, at least every few tens of milliseconds, and as soon as
 *   `MAX_UNFLUSHED_EVENTS` wait). An append of a `(runId, seq)` that exists already is ignored, so
 *   a replay never fails a batch.
 * - A `result` event ends its run when it is written, in the same transaction: the run's status
 *   and result are the event's, its end time the result's `timestamp`. Whoever reads the event
 *   (a follower, on any instance) reads the run as ended.
 * - `markFinished` flushes the run's events first: a finished run's log is complete and durable.
 *   The end is read back at once, written or not (`getRun`; `listRuns` no longer lists the run
 *   under the status it left).
 * - While writing the event log fails (a full disk), the events and run ends stay queued and the
 *   backend retries on its own, backing off (`WriteRetry`): until the next attempt is due,
 *   `flush()` (and so `markFinished`) fails at once without trying, and `ping` fails until a write
 *   goes through. Nothing queued is lost: a run's end is written with the first write that works.
 * - Runs are ordered by insertion (`rowid`), newest first in lists, for stable cursor paging.
 * - Ownership: a running run belongs to the instance that started it (`owner`) until its lease
 *   (`leaseUntil`) runs out; the owner renews it while the run goes (in a cluster, a run it has
 *   claimed and not started yet too). Only a queued run that no other instance holds is started.
 *   Recovery takes only the running runs an instance owned, or whose lease has lapsed (a lease
 *   ending exactly at `now` has not lapsed yet). `leftovers().queued` come oldest first, so a
 *   restart requeues them in order.
 * - `spendSince(t)` counts runs that ended at `t` or later.
 */
/**
 * At most this many appended events wait unflushed (a backend starts writing them when it reaches
 * it; a store's `flushMaxEvents` may lower it, never raise it): all a crash can lose. Recovery
 * numbers a crashed run's `result` past them, so no id a client may have received is ever given
 * to another event.
 */
export const MAX_UNFLUSHED_EVENTS = 1000

/** `markStarted` of a run that is not this instance's to start: its claim lapsed and another instance has it (cluster mode), or it ended. */
export class ClaimLost extends Error {}

export interface RunStore {
  /** Resolves when the store answers and its event log can be written (health checks). */
  ping: () => Promise<void>

  insertRun: (run: NewRun) => Promise<void>
  /**
   * The run started on `owner`, in `workingDirectory` (the path checked at start): recorded
   * before the spawn with its marker, so whoever recovers it can find and kill its processes.
   * Only a queued run that nobody or `owner` holds starts: any other throws `ClaimLost` (another
   * instance has it, or it ended meanwhile). An unknown id is ignored.
   */
  markStarted: (id: string, start: { startedAt: number, marker: string, sessionId: string, workingDirectory: string, owner: string, leaseUntil: number }) => Promise<void>
  markFinished: (id: string, result: RunResult, endedAt: number) => Promise<void>
  /** Extend the lease of every run `owner` holds that has not ended: running, or claimed and not started yet (cluster mode). */
  renewLeases: (owner: string, leaseUntil: number) => Promise<void>

  getRun: (id: string) => Promise<RunRecord | undefined>
  listRuns: (filter: RunFilter) => Promise<RunRecord[]>
  /**
   * What recovery takes over: the queued runs, and the running runs that `owner` held or whose
   * lease ended before `now`.
   */
  leftovers: (owner: string, now: number) => Promise<{ running: RunRecord[], queued: RunRecord[] }>

  appendEvent: (runId: string, seq: number, type: string, data: string) => void
  flush: () => Promise<void>
  /**
   * Events of a run with `seq > after`, in order, unflushed ones included: at most `limit`, and
   * no more than `maxBytes` of data (but always at least one event).
   */
  eventsAfter: (runId: string, after: number, limit: number, maxBytes?: number) => Promise<StoredEvent[]>
  /** The highest event seq of a run (0 when none). */
  lastSeq: (runId: string) => Promise<number>

  /** Retention: delete finished runs older than `maxAgeMs`, and the oldest beyond `maxRuns`. */
  prune: (opts: { maxAgeMs: number, maxRuns: number, now?: number }) => Promise<number>
  /** What each key's runs that ended since `sinceMs` cost, in USD. */
  spendSince: (sinceMs: number) => Promise<Map<string, number>>
  /**
   * The key that owns each session (null: made without a key), deleted ones included: ownership
   * is the session's own record, so pruning its runs never frees it for another key.
   */
  sessionOwners: () => Promise<Map<string, string | null>>
  /**
   * Record a session made without a run (a fork). A session is otherwise recorded by the first
   * `insertRun` that names it. An existing session is left as it is, its activity time included
   * (a run naming it is activity: `insertRun` moves it on); a deleted one is made anew, its owner
   * kept.
   */
  insertSession: (s: NewSession) => Promise<void>
  /** A session with its runs' figures; deleted ones too (`deletedAt` set). */
  getSession: (id: string) => Promise<SessionRecord | undefined>
  /** Sessions not deleted, most recently active first (then by id), a page at a time. */
  listSessions: (filter: SessionFilter) => Promise<SessionRecord[]>
  /** Change a session's title, activity time, or mark it deleted. Unknown ids are ignored. */
  updateSession: (id: string, change: { title?: string | null, updatedAt?: number, deletedAt?: number }) => Promise<void>

  recordDelivery: (runId: string, d: WebhookDelivery) => Promise<void>
  deliveries: (runId: string) => Promise<WebhookDelivery[]>
  /** Record (or move) a run's pending webhook: its next attempt and when it is due. */
  queueWebhook: (w: PendingWebhook) => Promise<void>
  /** The webhook (by its delivery id) was delivered or given up: it is no longer pending. */
  webhookDone: (id: string) => Promise<void>
  /** Every pending webhook, soonest first (to resume after a restart). */
  pendingWebhooks: () => Promise<PendingWebhook[]>

  /** Record an approval (new, or as it is now). */
  saveApproval: (a: ApprovalRecord) => Promise<void>
  getApproval: (id: string) => Promise<ApprovalRecord | undefined>
  /** Approvals, oldest first: of one run, of one key's runs, and/or in one state. */
  listApprovals: (filter: { runId?: string, keyName?: string, status?: ApprovalRecord['status'], limit: number }) => Promise<ApprovalRecord[]>

  /** Flush and let go. */
  close: () => Promise<void>
}

/**
 * Live events of runs, for followers: whatever instance appends an event publishes it here. In
 * one process it is an in-memory fan-out; across instances a backend's notifications carry it.
 * Delivery is at most once and in order per run; followers read the store for anything else.
 */
export interface EventBus {
  publish: (runId: string, event: RunEvent) => void
  /** Listen to one run's events; returns the unsubscribe function. */
  subscribe: (runId: string, listener: (event: RunEvent) => void) => () => void
}
