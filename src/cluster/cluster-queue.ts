import { DomainError, ShuttingDown, StoreUnavailable } from '../domain/errors.js'
import type { QueueLimits } from '../domain/messages.js'
import type { RunRecord, SessionRecord } from '../domain/records.js'
import type { UserTurn } from '../domain/run.js'
import { newRunOf } from '../engine/local.js'
import type { QueueHost, RunPlace, RunQueue, Submission, SubmittedRun } from '../engine/ports.js'
import { recoverRuns } from '../engine/recovery.js'
import { toRunResult } from '../engine/result.js'
import type { RunHandle } from '../engine/run-handle.js'
import type { EndReason } from '../domain/run.js'
import type { Claimed, ClusterNode } from './cluster.js'
import { RemoteRun } from './remote-run.js'

/**
 * The run queue of a cluster, as one instance takes part in it: runs are submitted to the shared
 * queue in the database (admission decided against the whole cluster, under its locks), claimed
 * while this instance has free slots, followed wherever they execute, cancelled in the queue,
 * and ended as `interrupted` when the instance running them dies.
 */
export class ClusterQueue implements RunQueue {
  /** Claiming has begun (at start) and not ended (shutdown). */
  private claiming = false
  /** The claims under way (a claimed run is tracked here once it settles). */
  private pumping: Promise<void> | undefined
  /** Whether runs held by other instances are live, as last read (for followers). */
  private readonly remoteLive = new Map<string, { live: boolean, at: number }>()

  constructor (private readonly h: QueueHost, private readonly node: ClusterNode) {}

  /**
   * Join the cluster. What is left to this instance is only what it held: its running runs (queued
   * ones are the cluster's, and the ones it had claimed go back to the queue); the queued runs of
   * `/api/execute*` whose clients waited on its previous life are cancelled.
   */
  async open (): Promise<{ running: RunRecord[], queued: RunRecord[] }> {
    const mine = await this.node.leftovers()
    await this.node.release(mine.claimed)
    this.node.onQueue(() => { void this.pump() })
    await this.node.start(() => { void this.tick() })
    for (const id of await this.node.clientRunsOf(this.node.instanceId)) await this.endQueued(id, { by: 'cancel', reason: 'its client is gone: the server restarted' })
    return { running: mine.running, queued: [] }
  }

  /** Start claiming (and reaping, every tick). */
  begin (): void {
    this.claiming = true
    void this.pump()
  }

  /** Claim no more. */
  stop (): void {
    this.claiming = false
  }

  /** Give back what was claimed here and never started; wait for the ends being stored; leave. */
  async close (unstarted: RunHandle[]): Promise<void> {
    await this.node.release(unstarted.map(h => h.id)).catch(() => {})
    await this.h.runs.allStored()
    await this.node.stop()
  }

  /** A claimed run never waits here: it starts at once (only claimed while a slot is free). */
  requeue (handle: RunHandle): void {
    handle.admit()
    this.h.runs.track(handle)
  }

  async locate (runId: string): Promise<RunPlace> {
    const here = this.h.runs.get(runId)
    if (here !== undefined) return { here }
    const owner = await this.node.ownerOf(runId)
    if (owner !== null && owner !== this.node.instanceId) return { elsewhere: owner }
    if (owner === this.node.instanceId) {
      // Claimed here and on its way to start: held here once the claims under way settle.
      await this.pumping
      const claimed = this.h.runs.get(runId)
      if (claimed !== undefined) return { here: claimed }
    }
    const r = await this.h.store.getRun(runId)
    return r !== undefined && (r.status === 'queued' || r.status === 'running') ? { queued: true } : { ended: true }
  }

  async position (runId: string): Promise<number | null> {
    const here = this.h.runs.get(runId)
    return here !== undefined ? here.position() : await this.node.positionOf(runId)
  }

  async stats (): Promise<{ active: number, queued: number }> {
    return { active: this.h.runs.all().filter(h => !h.isFinished()).length, queued: await this.node.queuedRuns().catch(() => 0) }
  }

  async leaveMessage (runId: string, id: string, turn: UserTurn, limits: QueueLimits): Promise<{ queued: true } | { owner: string } | { finished: true }> {
    return await this.node.postMessage(runId, id, turn, limits)
  }

  /** Whether a run held here continues or forks the session (the store knows of the rest). */
  busy (sessionId: string): boolean {
    return this.h.runs.all().some(h => h.spec.sessionId === sessionId || h.spec.forkedFrom === sessionId)
  }

  /** The cluster's admission sums what keys spent in SQL: nothing to count here. */
  spent (): void {}

  /** A slot here is free: the shared queue may have a run for it. */
  freed (): void {
    void this.pump()
  }

  async sharedSession (id: string): Promise<SessionRecord | undefined> {
    return await this.h.store.getSession(id)
  }

  /**
   * Admission against the whole cluster, in the transaction that records the run; the run then
   * waits in the shared queue for an instance with a free slot (this one tries at once). The client
   * holds a `RemoteRun`, which follows the run wherever it executes.
   */
  async submit (sub: Submission): Promise<SubmittedRun> {
    const { spec } = sub
    if (!this.claiming) throw new ShuttingDown('the server is shutting down; retry in a moment')
    const claims = spec.forkedFrom !== undefined ? [spec.sessionId, spec.forkedFrom] : [spec.sessionId]
    spec.submittedBy = this.node.instanceId
    const run = newRunOf(sub, Date.now())
    try {
      await this.node.admit(run, { key: sub.key, claims, held: session => this.h.sessions.isHeld(session), maxQueued: this.h.settings.maxQueuedRuns })
    } catch (err) {
      sub.refused(err)
      if (err instanceof DomainError) throw err
      sub.log.error({ err }, 'recording the run failed')
      throw new StoreUnavailable('the run store could not record the run; retry in a moment')
    }
    this.h.recorded(spec, run.keyName)
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
    if (!this.claiming || this.pumping !== undefined) return
    this.pumping = this.claimWhileFree().finally(() => { this.pumping = undefined })
    await this.pumping
  }

  private async claimWhileFree (): Promise<void> {
    try {
      while (this.claiming && this.h.runs.size < this.h.settings.maxConcurrentRuns) {
        const claimed = await this.node.claim(Date.now() + this.h.leaseMs)
        if (claimed === undefined) break
        if (claimed.record.spec === null || !this.claiming) {
          await this.node.release([claimed.record.id])
          break
        }
        await this.start(claimed)
      }
    } catch (err) {
      this.h.log.error({ err }, 'cluster: claiming queued runs failed; will retry')
    }
  }

  /** Start a claimed run here, with the messages that waited for it. */
  private async start ({ record: r, messages }: Claimed): Promise<void> {
    const spec = r.spec!
    const handle = await this.h.handleOf({ ...r, spec })
    for (const m of messages) handle.inbox.post(m.turn, m.id)
    // A run of /api/execute* whose client waited on a process that is gone: nobody hears it, it does not run.
    if (r.cancelOnDisconnect && spec.submittedBy !== undefined && await this.node.processGone(spec.submittedBy, r.createdAt)) {
      handle.cancel('its client is gone: the instance it was sent to stopped before it started')
    }
    handle.admit()
    this.h.runs.track(handle)
  }

  /** Every tick: end overdue queued runs and the runs of instances that died (their lease lapsed), then claim. */
  async tick (): Promise<void> {
    if (!this.claiming) return
    try {
      // A run's time limit counts from submission: one waiting too long in the queue times out there.
      for (const id of await this.node.overdue(Date.now())) await this.endQueued(id, { by: 'timeout' })
      const now = Date.now()
      const lapsed = await this.node.reap(now, now + this.h.leaseMs)
      if (lapsed.length > 0) {
        this.h.log.info({ runs: lapsed.map(r => r.id) }, 'cluster: ending the runs of an instance that stopped renewing their lease')
        await recoverRuns({ running: lapsed, queued: [] }, {
          store: this.h.store,
          log: this.h.log,
          maxOutputBytes: this.h.settings.maxOutputBytes,
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

  private async endQueued (runId: string, why: EndReason): Promise<boolean> {
    const ended = await this.node.cancelQueued(runId, r => toRunResult({ runId: r.id, sessionId: r.sessionId, timeoutS: r.spec?.timeoutS ?? 0, exitCode: null, stderrTail: '', oversizeLines: 0, startedAt: r.createdAt, endedAt: Date.now(), maxOutputBytes: this.h.settings.maxOutputBytes, ended: why }))
    if (ended === undefined) return false
    this.h.runLog.append(runId, ended.seq, 'result', JSON.stringify(ended.result))
    await this.h.store.flush().catch(() => {})
    this.h.finished(ended.record, ended.result)
    return true
  }

  /**
   * Whether a run is queued or running: here, or anywhere in the cluster (read from the store at
   * most once a second per run; unknown counts as live until read).
   */
  isLive (runId: string): boolean {
    if (this.h.runs.has(runId)) return true
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
