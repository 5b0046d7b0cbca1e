import type { Snapshots } from '../workspace/snapshots.js'
import { randomUUID } from 'node:crypto'
import type { RunResult } from '../domain/run.js'
import { endRun, startRun } from '../isolation/process-tree.js'
import { ClaimLost, type RunStore } from '../store/store.js'
import type { ApprovalDesk } from './approvals.js'
import { executeRun } from './executor.js'
import { executorSettings, runEnvironment, type Launcher } from './launch.js'
import { launchFailureReason, type LaunchHealth } from './launch-health.js'
import type { RunPlanner } from './planner.js'
import { recheckWorkingDir } from './policy.js'
import type { TranscriptSync } from './ports.js'
import { toRunResult, type RunOutcome } from './result.js'
import type { RunHandle } from './run-handle.js'
import type { ClaimOutcome, WarmPool } from './warm-pool.js'
import { keepSignature, type SessionKeeper } from './keep-alive.js'

/** What supervising runs takes from the engine. */
export interface SupervisorDeps {
  store: RunStore
  planner: RunPlanner
  launcher: Launcher
  approvals: ApprovalDesk
  launches: LaunchHealth
  transcripts: TranscriptSync
  warm: WarmPool | undefined
  /** Session keep-alive: a run's CLI kept for its session's next run (absent: never). */
  keeper?: SessionKeeper
  /** This server instance: it owns the runs it starts. */
  instanceId: string
  leaseMs: number
  /** Aborted when the server shuts down. */
  shutdown: AbortSignal
  started: (handle: RunHandle) => void
  /** The run's end is out (its result event); `stored` settles once the store has it. */
  finished: (handle: RunHandle, result: RunResult) => void
  /** A run's slot here is free (its ticket released; a queue may start another). */
  freed: (handle: RunHandle) => void
  warmClaim: (outcome: ClaimOutcome) => void
  /** Runs a run's CLI (the real executor; tests give a fake one). */
  execute?: typeof executeRun
  /** Records each run's working directory before and after it (absent: not recorded). */
  snapshots?: Snapshots
}

/**
 * The life of each run held here, from admitted to ended to stored: its time limit, the check of
 * its directory at start, the start recorded before the spawn, the CLI run by the executor (on a
 * warm spare when it took one), its end as a result, and its tree, token and slot let go.
 */
export class Supervisor {
  private readonly runs = new Map<string, RunHandle>()
  /** Run ends being stored, by run id (a cancel answers once the end is stored). */
  private readonly ending = new Map<string, Promise<void>>()

  constructor (private readonly d: SupervisorDeps) {}

  /** The live handle of a run queued or running here. */
  get (runId: string): RunHandle | undefined { return this.runs.get(runId) }
  has (runId: string): boolean { return this.runs.has(runId) }
  get size (): number { return this.runs.size }
  /** Every run held here now. */
  all (): RunHandle[] { return [...this.runs.values()] }

  /** Once a run's end is stored (at once when it is not being stored). */
  async stored (runId: string): Promise<void> {
    await this.ending.get(runId)
  }

  /** Every end being stored now. */
  async allStored (): Promise<void> {
    await Promise.all([...this.ending.values()])
  }

  /** Run a recorded run through its life, in the background. */
  track (handle: RunHandle): void {
    this.runs.set(handle.id, handle)
    void this.supervise(handle).finally(() => {
      handle.ticket?.release()
      this.runs.delete(handle.id)
      this.d.freed(handle)
    })
  }

  private async supervise (handle: RunHandle): Promise<void> {
    const spec = handle.spec
    // The limit counts from submission: a run that waits too long in the queue times out too.
    const deadline = setTimeout(() => handle.end({ by: 'timeout' }), Math.max(0, handle.submittedAt + spec.timeoutS * 1000 - Date.now()))
    deadline.unref()
    const ended = new Promise<void>(resolve => handle.onEnd(resolve))
    const outcome: RunOutcome = {
      runId: spec.runId,
      sessionId: spec.sessionId,
      timeoutS: spec.timeoutS,
      exitCode: null,
      stderrTail: '',
      oversizeLines: 0,
      startedAt: handle.submittedAt,
      endedAt: 0,
      maxOutputBytes: this.d.launcher.settings.maxOutputBytes,
      ...(spec.limits !== undefined ? { limits: spec.limits } : {})
    }
    let onShutdown: (() => void) | undefined
    const shutdown = new Promise<void>(resolve => {
      onShutdown = () => resolve()
      this.d.shutdown.addEventListener('abort', onShutdown, { once: true })
    })
    try {
      await Promise.race([handle.admitted, ended, shutdown])
      // Left queued by a shutdown: it stays queued in the store for the next start.
      if (!handle.wasAdmitted && handle.endedBy === undefined && this.d.shutdown.aborted) return
      if (handle.endedBy === undefined) await this.run(handle, outcome, ended)
    } catch (err) {
      handle.log.error({ err }, 'run failed unexpectedly')
      outcome.spawnError = { message: (err as Error).message }
    } finally {
      clearTimeout(deadline)
      // Its spare was never claimed (the run ended before it started): its session id is this
      // run's, so the spare goes rather than serving another run.
      if (handle.warm !== undefined) {
        this.d.warm?.drop(handle.warm)
        handle.warm = undefined
      }
      // One listener per run would pile up for the server's life.
      if (onShutdown !== undefined) this.d.shutdown.removeEventListener('abort', onShutdown)
    }
    if (outcome.abandoned === true) {
      handle.ticket?.release()
      handle.abandon()
      return
    }
    if (handle.endedBy !== undefined) outcome.ended = handle.endedBy
    else if (handle.inbox.stopRequested || outcome.interruptKilled === true) outcome.ended = { by: 'cancel', reason: 'interrupted by the client' }
    outcome.endedAt = Date.now()
    const result = toRunResult(outcome)
    handle.log.info({
      session_id: result.session_id,
      status: result.status,
      error_code: result.error_code,
      duration_s: result.execution_time,
      cost_usd: result.total_cost_usd,
      num_turns: result.num_turns
    }, 'run finished')
    // Its slot and session are free once its result is out: whoever hears of the end finds the
    // session idle, and the session's next run may start (its CLI is gone).
    handle.ticket?.release()
    const stored = this.d.store.markFinished(handle.id, result, outcome.endedAt)
      .catch((err: unknown) => handle.log.error({ err }, 'recording the end of the run failed'))
    this.ending.set(handle.id, stored)
    handle.finish(result)
    this.d.finished(handle, result)
    await stored
    this.ending.delete(handle.id)
  }

  /** The run's turn: check its directory again, record the start, run the CLI. */
  private async run (handle: RunHandle, outcome: RunOutcome, ended: Promise<void>): Promise<void> {
    const spec = handle.spec
    const { planner, launcher } = this.d
    // Checked again now, and used as checked: a directory swapped for a link since submission
    // cannot lead outside the roots.
    const cwd = await recheckWorkingDir(spec.cwd, launcher.settings)
    if (typeof cwd !== 'string') {
      outcome.refused = { code: 'working_directory_forbidden', message: cwd.refused }
      return
    }
    spec.cwd = cwd
    const identity = planner.identityOf(spec)
    const place = planner.placeOf(identity?.key ?? null)
    // The session may have been continued on another instance since this one last saw it.
    await this.d.transcripts.materialise(place.configDir, place.owner, spec.forkedFrom ?? spec.sessionId)
    if (spec.sessionMode !== 'fork') spec.sessionMode = await planner.sessionsOf(identity).exists(spec.sessionId) ? 'resume' : 'new'
    if (handle.endedBy !== undefined) return
    // On a spare, the run is the spare's: its marker, its token. The spare is the run's from here.
    const warm = handle.warm
    handle.warm = undefined
    // The session's CLI kept from its last run continues it, marker, token and all (one that
    // cannot take this run is ended first).
    const keeper = this.d.keeper
    const signature = keeper !== undefined ? keepSignature(spec) : undefined
    const kept = keeper !== undefined && warm === undefined && spec.sessionMode === 'resume' ? await keeper.take(spec.sessionId, signature) : undefined
    if (kept !== undefined) this.d.warmClaim('kept')
    const marker = kept?.marker ?? warm?.process.marker ?? randomUUID()
    const { env, credential, network } = runEnvironment(launcher, { runId: spec.runId, env: spec.env, marker, identity, credential: kept?.credential ?? warm?.credential, network: kept?.network ?? warm?.network })
    // A spare's token works from the moment a run holds it, not before.
    warm?.credential?.activate()
    handle.markRunning()
    let claimed = false
    /** The run's CLI was kept for the session's next run: its marker, token and network are the keeper's now. */
    let keptNow = false
    let handed = false
    try {
      // Recorded before the spawn: if the server dies now, the next start finds and kills the tree.
      // Unrecorded (a full disk), the run does not start: it could not be found again after a crash.
      try {
        await this.d.store.markStarted(spec.runId, { startedAt: Date.now(), marker, sessionId: spec.sessionId, workingDirectory: cwd, owner: this.d.instanceId, leaseUntil: Date.now() + this.d.leaseMs })
      } catch (err) {
        if (err instanceof ClaimLost) {
          // Another instance has it now: this one neither runs it nor writes its end.
          handle.log.warn({ err: err.message }, 'cluster: the claim on this run lapsed before it started; left to the instance that has it')
          outcome.abandoned = true
          if (warm !== undefined) this.d.warm?.drop(warm)
          return
        }
        handle.log.error({ err }, 'recording the start of the run failed; it does not start')
        outcome.refused = { code: 'store_unavailable', message: `The run store could not record the start of the run (${(err as Error).message}); it did not start` }
        if (warm !== undefined) this.d.warm?.drop(warm)
        return
      }
      this.d.started(handle)
      // What the run backgrounds is its own while it lives (at uid it is re-parented to init).
      if (identity !== undefined) startRun(marker, identity.uid)
      // The directory as it was before the run: recorded while the CLI starts, before its prompt.
      // As the run's own identity where it has one: git then reads only what the run itself could.
      const recorded = this.d.snapshots?.before(spec.runId, cwd, identity !== undefined ? { uid: identity.uid, gid: identity.gid, home: identity.home } : undefined)
        .then(() => true, (err: unknown) => { handle.log.warn({ err }, 'recording the working directory before the run failed; its changes are not recorded'); return false })
      const settings = executorSettings(launcher, identity, cwd, { limits: spec.limits, network })
      handed = true
      const execution = await (this.d.execute ?? executeRun)(spec, env, marker, settings, {
        event: (type, data) => handle.push(type, data),
        inbox: handle.inbox,
        askApproval: async (toolName, input, ask) => await this.d.approvals.ask(handle, toolName, input, ask),
        clientTool: async (callId, name, args) => await parkToolCall(handle, callId, name, args),
        ended,
        ...(recorded !== undefined ? { ready: recorded } : {}),
        log: handle.log
      }, warm === undefined
        ? undefined
        : {
            spare: warm.spare,
            process: warm.process,
            outcome: (o) => {
              claimed = true
              this.d.warmClaim(o)
            }
          }, keeper === undefined
        ? undefined
        : {
            ...(kept !== undefined ? { kept: kept.cli } : {}),
            ...(signature !== undefined
              ? { keep: cli => keeper.keep({ sessionId: spec.sessionId, signature, cli, marker, ...(credential !== undefined ? { credential } : {}), ...(network !== undefined ? { network } : {}) }) }
              : {})
          })
      keptNow = execution.kept === true
      // Ended before it could start on its spare: the spare goes with the run.
      if (warm !== undefined && !claimed) this.d.warm?.drop(warm)
      Object.assign(outcome, execution)
      if (recorded !== undefined && await recorded) {
        outcome.changes = await this.d.snapshots?.after(spec.runId)
          .catch((err: unknown) => { handle.log.warn({ err }, 'recording the working directory after the run failed'); return undefined })
      }
      if (execution.launched === true) this.d.launches.worked()
      else if (execution.launched === false) {
        const why = launchFailureReason(execution.stderrTail, execution.spawnError?.message)
        if (why !== null) this.d.launches.failed(why)
      }
      // What the SDK's mirror had not sent when the CLI ended is taken from the file, so the next
      // run of the session, on any instance, has it all.
      await this.d.transcripts.copyFrom(place.configDir, place.owner, spec.sessionId)
        .catch((err: unknown) => handle.log.warn({ err }, 'cluster: copying the transcript to the database failed'))
    } finally {
      // Taken for a run that never reached it (its start not recorded): it ends with the run.
      if (kept !== undefined && !handed) await kept.cli.close()
      if (!keptNow) endRun(marker)
      // The token dies with the run: whatever of it survives cannot use it (a spare handed back
      // keeps its own, inert again).
      if (keptNow) { /* lent to the kept CLI until it ends */ } else if (warm === undefined || claimed) {
        credential?.revoke()
        await network?.close()
      } else credential?.deactivate()
    }
  }
}

/**
 * A call of one of the client's functions: announced as a `tool_call` event (what the OpenAI
 * routes answer with `tool_calls`) and parked until the client's output arrives
 * (`Engine.answerToolCall`), or for the run's approval timeout, after which the agent is told that
 * no answer came.
 */
async function parkToolCall (handle: RunHandle, callId: string, name: string, args: unknown): Promise<string> {
  return await new Promise<string>(resolve => {
    const timer = setTimeout(() => {
      handle.toolCalls.delete(callId)
      resolve(`The client did not answer this call of ${name} within ${handle.spec.approvalTimeoutS} s.`)
    }, handle.spec.approvalTimeoutS * 1000)
    timer.unref()
    handle.toolCalls.set(callId, output => {
      clearTimeout(timer)
      handle.toolCalls.delete(callId)
      resolve(output)
    })
    handle.push('tool_call', { call_id: callId, name, arguments: JSON.stringify(args) })
  })
}
