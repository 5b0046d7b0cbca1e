import { StoreUnavailable } from '../domain/errors.js'
import { LocalEventBus } from '../store/event-bus.js'
import type { NewRun, RunRecord } from '../domain/records.js'
import type { EnginePorts, Peers, QueueHost, RunPlace, RunQueue, Submission, SubmittedRun, TranscriptSync } from './ports.js'
import { Admission } from './admission.js'
import { RunHandle } from './run-handle.js'

// The ports on one machine: runs wait in this process's scheduler, there are no peers, and
// transcripts are the CLI's own files.

/** A run as the store first records it. */
export function newRunOf (s: Submission, createdAt: number): NewRun {
  const { spec } = s
  return {
    id: spec.runId,
    sessionId: spec.sessionId,
    workingDirectory: spec.cwd,
    request: s.stored,
    spec,
    keyName: s.key?.name ?? null,
    ...(spec.identity !== undefined ? { sessionOwner: spec.identity } : {}),
    cancelOnDisconnect: s.cancelOnDisconnect,
    createdAt
  }
}

/**
 * The run queue of one machine: admission decides in memory and the scheduler starts runs as
 * slots free (`MAX_CONCURRENT_RUNS`, one at a time per session); the store records each run.
 */
export class LocalQueue implements RunQueue {
  private readonly admission: Admission

  constructor (private readonly d: QueueHost) {
    this.admission = new Admission({ maxConcurrent: d.settings.maxConcurrentRuns, maxQueued: d.settings.maxQueuedRuns }, Date.now, d.sessions)
  }

  async open (): Promise<{ running: RunRecord[], queued: RunRecord[] }> {
    this.admission.load({ spentToday: await this.d.store.spendSince(this.admission.today()) })
    return await this.d.store.leftovers(this.d.instanceId, Date.now())
  }

  begin (): void {}

  async submit (s: Submission): Promise<SubmittedRun> {
    const { spec } = s
    const keyName = s.key?.name ?? null
    const handle = new RunHandle(spec, s.cancelOnDisconnect, keyName, s.log, this.d.runLog, 0)
    const claims = spec.forkedFrom !== undefined ? [spec.sessionId, spec.forkedFrom] : [spec.sessionId]
    // A new session belongs where its transcript is written: the identity it runs as (a fork of
    // another key's session by an admin lives with that key), else the requesting key.
    let ticket
    try {
      ticket = this.admission.admit({ sessionId: spec.sessionId, claims, key: s.key, ...(spec.identity !== undefined ? { newSessionOwner: spec.identity } : {}) }, () => handle.admit())
    } catch (err) {
      s.refused(err)
      throw err
    }
    s.admitted?.(handle)
    try {
      await this.d.store.insertRun(newRunOf(s, handle.submittedAt))
    } catch (err) {
      ticket.release()
      s.unrecorded()
      s.log.error({ err }, 'recording the run failed')
      throw new StoreUnavailable('the run store could not record the run; retry in a moment')
    }
    handle.ticket = ticket
    this.d.recorded(spec, keyName)
    handle.push('run', { run_id: spec.runId, session_id: spec.sessionId, working_directory: spec.cwd })
    this.d.runs.track(handle)
    // Durable before the client hears of it: a crash right after the 202 keeps the run's first event.
    await this.d.store.flush().catch((err: unknown) => s.log.error({ err }, 'flushing the run event failed; will retry'))
    return handle
  }

  requeue (handle: RunHandle): void {
    handle.ticket = this.admission.readmit(handle.spec.sessionId, handle.keyName, () => handle.admit())
    this.d.runs.track(handle)
  }

  async locate (runId: string): Promise<RunPlace> {
    const here = this.d.runs.get(runId)
    return here !== undefined ? { here } : { ended: true }
  }

  async cancelQueued (): Promise<boolean> { return false }

  async position (runId: string): Promise<number | null> {
    return this.d.runs.get(runId)?.position() ?? null
  }

  async stats (): Promise<{ active: number, queued: number }> {
    return { active: this.admission.active, queued: this.admission.queued }
  }

  isLive (runId: string): boolean { return this.d.runs.has(runId) }

  async leaveMessage (): Promise<{ finished: true }> { return { finished: true } }

  busy (sessionId: string): boolean { return this.admission.hasRuns(sessionId) }

  spent (keyName: string | null, usd: number | null): void {
    this.admission.spent(keyName, usd)
  }

  freed (): void {}

  async sharedSession (): Promise<undefined> { return undefined }

  stop (): void {
    this.admission.close()
  }

  async close (): Promise<void> {}
}

/** One machine has no peers: every run is here or over. */
export const noPeers: Peers = {
  call: async () => { throw new StoreUnavailable('no other instance to ask') },
  serve: () => {},
  stats: () => undefined
}

/** One machine keeps transcripts only in the CLI's own files. */
export const noTranscriptSync: TranscriptSync = {
  materialise: async () => {},
  copyFrom: async () => {}
}

/** The engine's ports on one machine. */
export function localPorts (): EnginePorts {
  return { queue: host => new LocalQueue(host), peers: noPeers, transcripts: noTranscriptSync, bus: new LocalEventBus(), warmSpares: true }
}
