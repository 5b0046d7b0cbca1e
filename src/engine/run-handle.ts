import type { RunnerLogger } from '../domain/logger.js'
import type { RunLog } from './run-log.js'
import { Inbox } from './inbox.js'
import type { Ticket } from './scheduler.js'
import type { WarmSpare } from './warm-pool.js'
import type { RunEventType, RunResult, RunSpec, RunStatus } from '../domain/run.js'
import type { EndReason } from '../domain/run.js'

/** Why the server ended a run early. */
/**
 * A run while it is queued or running, as the rest of the server sees it: its id, state and
 * result, and the one thing anyone may do to it, `cancel`. The engine drives its life through the
 * methods marked internal.
 */
export class RunHandle {
  /** Resolves with the run's result once it has ended and its process tree is gone. */
  readonly result: Promise<RunResult>
  /** Resolves when admission lets the run start. */
  readonly admitted: Promise<void>
  private currentStatus: RunStatus = 'queued'
  private ended: EndReason | undefined
  private admittedYet = false
  private letIn!: () => void
  private resolveResult!: (r: RunResult) => void
  private readonly endListeners: Array<() => void> = []
  private serialized = ''
  /** Its place with admission (queue position, slot). */
  ticket: Ticket | undefined
  /** Follow-up messages and interrupts while it lives. */
  readonly inbox = new Inbox()
  /** Calls of the client's own functions waiting for the client's answer, by call id. */
  readonly toolCalls = new Map<string, (output: string) => void>()
  /** The warm spare taken for it at admission, until it starts on it (or gives it back). */
  warm: WarmSpare | undefined

  constructor (
    readonly spec: RunSpec,
    readonly cancelOnDisconnect: boolean,
    readonly keyName: string | null,
    /** Every log line about this run carries its run id, key name and request id. */
    readonly log: RunnerLogger,
    private readonly runLog: RunLog,
    private seq: number,
    /** When it was accepted: its time limit counts from then. */
    readonly submittedAt: number = Date.now()
  ) {
    this.result = new Promise(resolve => { this.resolveResult = resolve })
    this.admitted = new Promise(resolve => { this.letIn = resolve })
  }

  get id (): string { return this.spec.runId }
  get status (): RunStatus { return this.currentStatus }
  /** Why it was ended early, if it was. */
  get endedBy (): EndReason | undefined { return this.ended }
  /** Admission let it start (it may not be `running` yet: the spawn is on its way). */
  get wasAdmitted (): boolean { return this.admittedYet }
  /** The result as JSON, exactly as the `result` event carries it (set when the run ends). */
  get resultJson (): string { return this.serialized }

  /**
   * Place in the queue (1-based) while queued, 0 once running. A run that has its slot and is
   * starting (its CLI on the way) is still queued, and next: 1.
   */
  position (): number {
    if (this.currentStatus !== 'queued') return 0
    return Math.max(1, this.ticket?.position() ?? 1)
  }

  isFinished (): boolean {
    return this.currentStatus !== 'queued' && this.currentStatus !== 'running'
  }

  /** Ask the run to end; a queued run never starts, a running one has its tree killed. Idempotent. */
  cancel (reason: string): void {
    this.end({ by: 'cancel', reason })
  }

  /** @internal */
  end (reason: EndReason): void {
    if (this.ended !== undefined || this.isFinished()) return
    this.ended = reason
    for (const l of this.endListeners.splice(0)) l()
  }

  /** @internal called once, when `end` is. */
  onEnd (listener: () => void): void {
    if (this.ended !== undefined) listener()
    else this.endListeners.push(listener)
  }

  /** @internal admission lets it start. */
  admit (): void {
    this.admittedYet = true
    this.letIn()
  }

  /** @internal its CLI is being started. */
  markRunning (): void {
    this.currentStatus = 'running'
  }

  /** @internal append an event to the log (store and live followers). */
  push (type: RunEventType, data: unknown): void {
    this.runLog.append(this.id, ++this.seq, type, typeof data === 'string' ? data : JSON.stringify(data))
  }

  /**
   * @internal cluster mode: another instance runs it after all. Those waiting here for its end
   * are let go (it is not this process's to report); its state reads as the store has it.
   */
  abandon (): void {
    this.currentStatus = 'queued'
    this.ended ??= { by: 'cancel', reason: 'claimed elsewhere' }
    this.resolveResult(null as unknown as RunResult)
  }

  /** @internal the run has ended: the `result` event, then its state. */
  finish (result: RunResult): void {
    // Serialized once: the log, the stream and /api/execute all send this same text.
    this.serialized = JSON.stringify(result)
    this.push('result', this.serialized)
    this.currentStatus = result.status
    this.resolveResult(result)
  }
}
