import { DomainError, ShuttingDown, StoreUnavailable } from '../domain/errors.js'
import type { KeyLimits } from '../domain/keys.js'
import type { RunnerLogger } from '../domain/logger.js'
import { recoverRuns } from '../engine/recovery.js'
import { toRunResult } from '../engine/result.js'
import type { RunLog } from '../engine/run-log.js'
import type { EndReason } from '../domain/run.js'
import type { RunRequest, RunResult, RunSpec } from '../domain/run.js'
import type { NewRun, RunRecord } from '../domain/records.js'
import type { RunStore } from '../store/store.js'
import type { Claimed, ClusterNode } from './cluster.js'
import { RemoteRun, type SubmittedRun } from './remote-run.js'

/** What the runner lends the cluster's runs: its store, log and engine. */
export interface ClusterRunsHost {
  cluster: ClusterNode
  store: RunStore
  runLog: RunLog
  log: RunnerLogger
  leaseMs: number
  maxConcurrentRuns: number
  maxQueuedRuns: number
  maxOutputBytes: number
  /** Aborted when the server shuts down. */
  shutdown: AbortSignal
  /** Runs this instance holds now (queued here or running). */
  localRuns: () => number
  isLocal: (runId: string) => boolean
  /** Sessions being deleted here: no run of them is admitted. */
  isHeld: (sessionId: string) => boolean
  /** A run was admitted: its session's owner and directory, for the runs that continue it. */
  admitted: (spec: RunSpec, keyName: string | null) => void
  /** Start a claimed run here, as a recovered run starts. */
  start: (claimed: Claimed) => Promise<void>
  /** A run ended without this instance running it (cancelled in the queue, or its instance died). */
  finished: (r: RunRecord, result: RunResult) => void
  /** Cancel a run (wherever it is): for a `RemoteRun` whose client left. */
  cancel: (runId: string, reason: string) => Promise<unknown>
}

/**
 * The runs of a cluster as one instance takes part in them: submitted to the shared queue
 * (admission checked against the whole cluster), claimed while this instance has free slots,
 * followed wherever they execute, cancelled in the queue, and ended as `interrupted` when the
 * instance running them dies.
 */
export class ClusterRuns {
  /** Claiming has begun (at start) and not ended (shutdown). */
  private claiming = false
  private pumping = false
  /** Whether runs held by other instances are live, as last read (for followers). */
  private readonly remoteLive = new Map<string, { live: boolean, at: number }>()

  constructor (private readonly h: ClusterRunsHost) {}

  /** Start claiming (and reaping, every tick). */
  begin (): void {
    this.claiming = true
    void this.pump()
  }

  /** Claim no more. */
  end (): void {
    this.claiming = false
  }

  /**
   * Admission against the whole cluster, in the transaction that records the run; the run then
   * waits in the shared queue for an instance with a free slot (this one tries at once). The client
   * holds a `RemoteRun`, which follows the run wherever it executes.
   */
  async submit (spec: RunSpec, opts: { request: RunRequest, stored: RunRequest, key: KeyLimits | null, cancelOnDisconnect: boolean, requestId?: string }): Promise<SubmittedRun> {
    const { cluster } = this.h
    if (!this.claiming) throw new ShuttingDown('the server is shutting down; retry in a moment')
    const claims = spec.forkedFrom !== undefined ? [spec.sessionId, spec.forkedFrom] : [spec.sessionId]
    if (opts.requestId !== undefined) spec.requestId = opts.requestId
    spec.submittedBy = cluster.instanceId
    const run: NewRun = {
      id: spec.runId,
      sessionId: spec.sessionId,
      workingDirectory: spec.cwd,
      request: opts.stored,
      spec,
      keyName: opts.key?.name ?? null,
      ...(spec.identity !== undefined ? { sessionOwner: spec.identity } : {}),
      cancelOnDisconnect: opts.cancelOnDisconnect,
      createdAt: Date.now()
    }
    try {
      await cluster.admit(run, { key: opts.key, claims, held: this.h.isHeld, maxQueued: this.h.maxQueuedRuns })
    } catch (err) {
      if (err instanceof DomainError) throw err
      this.h.log.error({ err, run_id: spec.runId }, 'recording the run failed')
      throw new StoreUnavailable('the run store could not record the run; retry in a moment')
    }
    this.h.admitted(spec, run.keyName)
    this.h.runLog.append(spec.runId, 1, 'run', JSON.stringify({ run_id: spec.runId, session_id: spec.sessionId, working_directory: spec.cwd }))
    await this.h.store.flush().catch((err: unknown) => this.h.log.error({ err }, 'flushing the run event failed; will retry'))
    void this.pump()
    return new RemoteRun(spec.runId, run.createdAt, {
      cancel: async reason => { await this.h.cancel(spec.runId, reason) },
      follow: async (write, signal) => await this.h.runLog.follow(spec.runId, 0, { write, drained: async () => {}, signal: AbortSignal.any([signal, this.h.shutdown]) }, () => this.isLive(spec.runId))
    })
  }

  /**
   * Claim queued runs while this instance has free slots (`MAX_CONCURRENT_RUNS`), oldest first,
   * each the first live run of its session; each starts here as a recovered run does.
   */
  async pump (): Promise<void> {
    if (!this.claiming || this.pumping) return
    this.pumping = true
    try {
      while (this.claiming && this.h.localRuns() < this.h.maxConcurrentRuns) {
        const claimed = await this.h.cluster.claim(Date.now() + this.h.leaseMs)
        if (claimed === undefined) break
        if (claimed.record.spec === null || !this.claiming) {
          await this.h.cluster.release([claimed.record.id])
          break
        }
        await this.h.start(claimed)
      }
    } catch (err) {
      this.h.log.error({ err }, 'cluster: claiming queued runs failed; will retry')
    } finally {
      this.pumping = false
    }
  }

  /** Every tick: end overdue queued runs and the runs of instances that died (their lease lapsed), then claim. */
  async tick (): Promise<void> {
    if (!this.claiming) return
    try {
      // A run's time limit counts from submission: one waiting too long in the queue times out there.
      for (const id of await this.h.cluster.overdue(Date.now())) await this.endQueued(id, { by: 'timeout' })
      const now = Date.now()
      const lapsed = await this.h.cluster.reap(now, now + this.h.leaseMs)
      if (lapsed.length > 0) {
        this.h.log.info({ runs: lapsed.map(r => r.id) }, 'cluster: ending the runs of an instance that stopped renewing their lease')
        await recoverRuns({ running: lapsed, queued: [] }, {
          store: this.h.store,
          log: this.h.log,
          maxOutputBytes: this.h.maxOutputBytes,
          finished: this.h.finished,
          requeue: async () => {}
        })
      }
    } catch (err) {
      this.h.log.error({ err }, 'cluster: reaping lapsed runs failed; will retry')
    }
    await this.pump()
  }

  /** End a queued run nobody has claimed; false when it is claimed or over. */
  async cancelQueued (runId: string, reason: string): Promise<boolean> {
    return await this.endQueued(runId, { by: 'cancel', reason })
  }

  /** Cancel the queued runs of `/api/execute*` whose clients waited on a previous life of this instance. */
  async cancelOrphans (): Promise<void> {
    for (const id of await this.h.cluster.clientRunsOf(this.h.cluster.instanceId)) await this.endQueued(id, { by: 'cancel', reason: 'its client is gone: the server restarted' })
  }

  private async endQueued (runId: string, why: EndReason): Promise<boolean> {
    let ended: { result: RunResult, seq: number } | undefined
    const record = await this.h.cluster.cancelQueued(runId, async (c, r) => {
      const now = Date.now()
      const result = toRunResult({ runId: r.id, sessionId: r.sessionId, timeoutS: r.spec?.timeoutS ?? 0, exitCode: null, stderrTail: '', oversizeLines: 0, startedAt: r.createdAt, endedAt: now, maxOutputBytes: this.h.maxOutputBytes, ended: why })
      const seq = await this.h.store.lastSeq(r.id) + 1
      await c.query('UPDATE runs SET status = $1, ended_at = $2, result = $3, spec = NULL WHERE id = $4', [result.status, now, JSON.stringify(result), r.id])
      ended = { result, seq }
    })
    if (record === undefined || ended === undefined) return false
    this.h.runLog.append(runId, ended.seq, 'result', JSON.stringify(ended.result))
    await this.h.store.flush().catch(() => {})
    this.h.finished(record, ended.result)
    return true
  }

  /**
   * Whether a run is queued or running: here, or anywhere in the cluster (read from the store at
   * most once a second per run; unknown counts as live until read).
   */
  isLive (runId: string): boolean {
    if (this.h.isLocal(runId)) return true
    const known = this.remoteLive.get(runId)
    if (known === undefined || Date.now() - known.at > 1000) {
      const entry = { live: known?.live ?? true, at: Date.now() }
      this.remoteLive.set(runId, entry)
      void this.h.store.getRun(runId).then(r => {
        entry.live = r !== undefined && (r.status === 'queued' || r.status === 'running')
        if (!entry.live) setTimeout(() => this.remoteLive.delete(runId), 5000).unref()
      }, () => {})
    }
    return known?.live ?? true
  }
}
