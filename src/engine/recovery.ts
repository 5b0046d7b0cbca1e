import { MAX_UNFLUSHED_EVENTS, type RunStore } from '../store/store.js'
import { type RunRecord } from '../domain/records.js'
import { RUN_MARKER_VAR } from '../isolation/proc.js'
import type { RunnerLogger } from '../domain/logger.js'
import { findMarkedProcesses, killAll, killRunTree } from '../isolation/process-tree.js'
import { PartialText, toRunResult } from './result.js'
import { REPLAY_PAGE, REPLAY_PAGE_BYTES } from './run-log.js'
import type { RunResult } from '../domain/run.js'

/** What recovery needs of the engine. */
export interface RecoveryContext {
  store: RunStore
  log: RunnerLogger
  maxOutputBytes: number
  /** A stored run was ended here (interrupted or cancelled). */
  finished: (r: RunRecord, result: RunResult) => void
  /** Queue a recovered run again (it was accepted before the restart). */
  requeue: (r: RunRecord & { spec: NonNullable<RunRecord['spec']> }) => Promise<void>
}

/** What recovering a previous life of this instance needs besides `RecoveryContext`. */
export interface LeftoversContext extends RecoveryContext {
  /** The marker prefix of this instance's warm spares, and of those of this very process. */
  spares: string
  ownSpares: string
}

/**
 * What a previous process left, from the start (`note`) until recovery has dealt with it once the
 * server holds its port (`recover`); requests about runs wait for that (`recovered`).
 */
export class Leftovers {
  private left: { running: RunRecord[], queued: RunRecord[] } | undefined
  /** Something was left and is not dealt with yet: requests about runs wait. */
  private waiting = false
  private done = (): void => {}
  private readonly settled = new Promise<void>(resolve => { this.done = resolve })

  /** What the store (or the cluster's queue) says was left; read before any new run exists. */
  note (left: { running: RunRecord[], queued: RunRecord[] }): void {
    this.left = left
    this.waiting = left.running.length > 0 || left.queued.length > 0
  }

  /** Recover what was left, once (nothing when the server is already closing). */
  async recover (closing: boolean, ctx: LeftoversContext): Promise<void> {
    const left = this.left
    this.left = undefined
    try {
      if (left !== undefined && !closing) await recoverLeftovers(left, ctx)
    } finally {
      this.waiting = false
      this.done()
    }
  }

  /**
   * Resolves once the runs a previous process left are interrupted or queued again, including
   * while recovery is under way: until then a queued run of that process is in no one's hands.
   * At once when nothing was left.
   */
  async recovered (): Promise<void> {
    if (!this.waiting) return
    await this.settled
  }
}

/**
 * What a previous life of this instance left: the spares it had parked (nobody claims them now)
 * are ended, then its runs recovered (see `recoverRuns`).
 */
export async function recoverLeftovers (leftovers: { running: RunRecord[], queued: RunRecord[] }, ctx: LeftoversContext): Promise<void> {
  const ended = await killAll(() => findMarkedProcesses(RUN_MARKER_VAR, v => v.startsWith(ctx.spares) && !v.startsWith(ctx.ownSpares)))
  if (ended > 0) ctx.log.info({ killed: ended }, 'ended the warm spares a previous process left')
  await recoverRuns(leftovers, ctx)
}

/**
 * What a previous process left: runs it had `running` are `interrupted` (after any process of
 * theirs still alive is killed, found by the run marker), with the text they had streamed as their
 * output; runs it had `queued` are queued again, but for those whose client waited on a
 * connection that died with it (cancelled).
 */
export async function recoverRuns (leftovers: { running: RunRecord[], queued: RunRecord[] }, ctx: RecoveryContext): Promise<void> {
  for (const r of leftovers.running) {
    let killed = 0
    if (r.marker !== null) {
      const report = await killRunTree({ rootPid: undefined, markerName: RUN_MARKER_VAR, markerValue: r.marker, graceMs: 0, rootExited: Promise.resolve() })
      killed = report.killed
    }
    await finishStored(r, { status: 'interrupted', error: 'The server stopped while this run was going; it did not finish' }, ctx)
    ctx.log.warn({ run_id: r.id, killed }, 'run interrupted by a server restart')
  }
  for (const r of leftovers.queued) {
    if (r.cancelOnDisconnect || r.spec === null) {
      await finishStored(r, { status: 'cancelled', error: 'Run cancelled: its client\'s connection ended when the server stopped' }, ctx)
      continue
    }
    await ctx.requeue({ ...r, spec: r.spec })
    ctx.log.info({ run_id: r.id }, 'queued run recovered after a restart')
  }
}

/** End a stored run that has no live process: its result event, then the row. */
async function finishStored (r: RunRecord, how: { status: 'interrupted' | 'cancelled', error: string }, ctx: RecoveryContext): Promise<void> {
  const now = Date.now()
  const partialText = await storedText(ctx.store, r, ctx.maxOutputBytes)
  const result: RunResult = {
    ...toRunResult({ runId: r.id, sessionId: r.sessionId, timeoutS: 0, exitCode: null, stderrTail: '', oversizeLines: 0, startedAt: r.createdAt, endedAt: now, maxOutputBytes: ctx.maxOutputBytes, ended: { by: 'cancel', reason: '' }, partialText }),
    status: how.status,
    error_code: how.status,
    error: how.error
  }
  // Past every id the crash may have lost: clients may have received those, for other events.
  const stored = await ctx.store.lastSeq(r.id)
  const seq = r.status === 'running' ? stored + MAX_UNFLUSHED_EVENTS + 1 : stored + 1
  // Its permission requests were never answered, and now never will be.
  for (const a of await ctx.store.listApprovals({ runId: r.id, status: 'pending', limit: 1000 })) {
    await ctx.store.saveApproval({ ...a, status: 'denied', resolvedAt: now, decisionReason: 'run_ended', message: 'The run ended before this permission request was answered.' })
  }
  ctx.store.appendEvent(r.id, seq, 'result', JSON.stringify(result))
  await ctx.store.markFinished(r.id, result, now)
  ctx.finished(r, result)
}

/** The text a stored run had streamed, read back from its log (capped like any output). */
export async function storedText (store: RunStore, r: RunRecord, maxOutputBytes: number): Promise<string> {
  const partial = new PartialText(maxOutputBytes)
  let cursor = 0
  for (;;) {
    const page = await store.eventsAfter(r.id, cursor, REPLAY_PAGE, REPLAY_PAGE_BYTES)
    if (page.length === 0 || partial.truncated) break
    for (const e of page) {
      cursor = e.seq
      if (e.type === 'text') partial.add((JSON.parse(e.data) as { text: string }).text, r.request.include_partial_messages !== true)
    }
  }
  return partial.text
}
