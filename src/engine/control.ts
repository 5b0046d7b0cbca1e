import { randomUUID } from 'node:crypto'
import { DomainError, RunFinished } from '../domain/errors.js'
import type { QueueLimits } from '../domain/messages.js'
import type { ApprovalAnswer, ApprovalRecord } from '../domain/records.js'
import type { UserTurn } from '../domain/run.js'
import type { RunStore } from '../store/store.js'
import type { ApprovalDesk } from './approvals.js'
import type { Peers, RunPlace, RunQueue } from './ports.js'
import type { RunHandle } from './run-handle.js'
import type { Supervisor } from './supervisor.js'

/** What steering runs takes from the engine. */
export interface ControlDeps {
  runs: Supervisor
  queue: RunQueue
  peers: Peers
  approvals: ApprovalDesk
  store: RunStore
  /** What may wait for one run's agent (`MAX_QUEUED_MESSAGES`, `MAX_QUEUED_MESSAGE_BYTES`). */
  queueLimits: QueueLimits
  /** How long a run may take to die once cancelled (a cancel sent to a peer waits that long and more). */
  killGraceMs: number
}

/**
 * Steering a run wherever it is: follow-up messages, interrupts, cancels and approval answers go
 * to the run when it is held here, wait with it in a shared queue, or go to the instance that
 * holds it (through the peers); and the same requests, coming from other instances, answered here.
 */
export class Control {
  constructor (private readonly d: ControlDeps) {}

  /**
   * Hand a follow-up message to a live run: its id. A run that has ended, or takes no more input
   * (its last turn answered, or interrupted to stop), refuses it (`RunFinished`).
   */
  async message (runId: string, turn: UserTurn): Promise<string> {
    const refused = (): never => { throw new RunFinished(`run ${runId} has ended or takes no more messages; start a new run with its session_id`) }
    const handle = this.d.runs.get(runId)
    if (handle !== undefined) return handle.inbox.post(turn, randomUUID(), this.d.queueLimits) ?? refused()
    // Kept for whichever instance starts the run (within the same limits), or handed to the one that holds it.
    const id = randomUUID()
    const where = await this.d.queue.leaveMessage(runId, id, turn, this.d.queueLimits)
    if ('queued' in where) return id
    if ('finished' in where) return refused()
    return await this.d.peers.call(where.owner, 'message', { runId, turn }) as string
  }

  /**
   * Stop a run's current turn through the CLI's own interrupt; with a prompt, that prompt is the
   * next turn and the run goes on, without one the run ends as cancelled. A queued run that has not
   * started: without a prompt it is cancelled, with one the prompt waits as a message.
   */
  async interrupt (runId: string, turn?: UserTurn): Promise<void> {
    const nothing = (): never => { throw new RunFinished(`run ${runId} has ended; nothing to interrupt`) }
    const place = await this.placeOf(runId)
    if ('elsewhere' in place) {
      await this.d.peers.call(place.elsewhere, 'interrupt', { runId, turn })
      return
    }
    if ('ended' in place) return nothing()
    if ('queued' in place) {
      // Waiting in a shared queue: a prompt waits as a message; none cancels the run there.
      if (turn !== undefined) await this.message(runId, turn)
      else if (!await this.d.queue.cancelQueued(runId, 'interrupted before it started')) nothing()
      return
    }
    const handle = place.here
    if (handle.isFinished()) return nothing()
    if (handle.status === 'queued') {
      if (turn === undefined) handle.cancel('interrupted before it started')
      else if (handle.inbox.post(turn, randomUUID(), this.d.queueLimits) === undefined) nothing()
      return
    }
    if (!handle.inbox.interrupt(turn, this.d.queueLimits)) nothing()
  }

  /**
   * Cancel a queued or running run and wait until it has ended and its end is stored; false when
   * it is not live (finished, or unknown). Wherever it is.
   */
  async cancel (runId: string, reason: string): Promise<boolean> {
    const here = this.d.runs.get(runId)
    if (here !== undefined) return await this.cancelHere(here, reason)
    if (await this.d.queue.cancelQueued(runId, reason)) return true
    // Claimed meanwhile (here, or elsewhere), or given back to a shared queue.
    const place = await this.d.queue.locate(runId)
    if ('here' in place) return await this.cancelHere(place.here, reason)
    if ('elsewhere' in place) return await this.d.peers.call(place.elsewhere, 'cancel', { runId, reason }, this.d.killGraceMs + 10_000) as boolean
    return 'queued' in place && await this.d.queue.cancelQueued(runId, reason)
  }

  /** End a run held here; once its end is stored. */
  private async cancelHere (handle: RunHandle, reason: string): Promise<boolean> {
    handle.cancel(reason)
    await handle.result
    await this.d.runs.stored(handle.id)
    return true
  }

  /** Where a run is: held here (looked at first, without a query), else where the queue says. */
  private async placeOf (runId: string): Promise<RunPlace> {
    const here = this.d.runs.get(runId)
    return here !== undefined ? { here } : await this.d.queue.locate(runId)
  }

  /** Answer a pending approval of `runId` where the run is waiting for it: here, or on the instance that holds it. */
  async answerApproval (runId: string, approvalId: string, answer: ApprovalAnswer): Promise<ApprovalRecord> {
    if (!this.d.runs.has(runId)) {
      const place = await this.d.queue.locate(runId)
      if ('elsewhere' in place) return await this.d.peers.call(place.elsewhere, 'answer', { runId, approvalId, answer }) as ApprovalRecord
    }
    return await this.d.approvals.answer(runId, approvalId, answer)
  }

  /** Pending approvals of a run: here, or in the store for a run held elsewhere; none for a run nobody holds. */
  async pendingApprovals (runId: string): Promise<number> {
    const place = await this.placeOf(runId)
    if ('here' in place) return this.d.approvals.pendingOf(runId)
    if (!('elsewhere' in place)) return 0
    return (await this.d.store.listApprovals({ runId, status: 'pending', limit: 1000 })).length
  }

  /** What other instances ask of the runs held here. */
  async answerPeer (op: string, args: any): Promise<unknown> {
    const runId = String(args?.runId)
    switch (op) {
      case 'cancel': return await this.cancel(runId, String(args.reason ?? 'cancelled'))
      case 'message': return await this.message(runId, args.turn as UserTurn)
      case 'interrupt': return await this.interrupt(runId, args.turn as UserTurn | undefined)
      case 'answer': return await this.d.approvals.answer(runId, String(args.approvalId), args.answer as ApprovalAnswer)
      default: throw new DomainError('invalid_request', `unknown cluster request ${op}`)
    }
  }
}
