import { randomUUID } from 'node:crypto'
import type { UserTurn } from './types.js'

/** A follow-up turn waiting for the agent. */
export interface QueuedTurn extends UserTurn {
  id: string
}

/**
 * What a run accepts while it works: follow-up messages, handed to the agent one turn at a time
 * in order, and interrupts. It closes when the agent has answered its last turn and nothing waits,
 * in the same synchronous step that checks the queue, so a message is either accepted and answered
 * or refused (`run_finished`), never accepted and dropped.
 */
export class Inbox {
  private readonly queue: QueuedTurn[] = []
  private closed = false
  /** An interrupt without a prompt: the run ends (cancelled) once what was accepted is answered. */
  private stopping = false
  /** Set by the executor while the CLI runs: interrupts its current turn. */
  interruptTurn: (() => void) | undefined

  get isClosed (): boolean { return this.closed }
  get stopRequested (): boolean { return this.stopping }

  /** Accept a message for the agent: its id, or undefined once the run takes no more. */
  post (turn: UserTurn, id: string = randomUUID()): string | undefined {
    if (this.closed || this.stopping) return undefined
    this.queue.push({ id, ...turn })
    return id
  }

  /**
   * Stop the agent's current turn. With a prompt, that prompt is its next turn (ahead of any
   * queued message) and the run goes on; without, the run ends after it. False once closed.
   */
  interrupt (turn?: UserTurn): boolean {
    if (this.closed || this.stopping) return false
    if (turn !== undefined) this.queue.unshift({ id: randomUUID(), ...turn })
    else this.stopping = true
    this.interruptTurn?.()
    return true
  }

  /** The next turn to hand over; when none waits, the inbox closes (and this returns undefined). */
  takeOrClose (): QueuedTurn | undefined {
    const next = this.queue.shift()
    if (next === undefined) this.closed = true
    return next
  }

  /** No more input (the run ended early). What was queued is not handed over. */
  close (): void {
    this.closed = true
  }
}
