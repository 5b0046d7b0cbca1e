import { randomUUID } from 'node:crypto'
import type { UserTurn } from '../domain/run.js'
import { checkRoom, turnBytes, type QueueLimits } from '../domain/messages.js'

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
  private queue: QueuedTurn[] = []
  /** What the waiting turns hold (see `turnBytes`). */
  private bytes = 0
  private closed = false
  /** An interrupt without a prompt: the run ends (cancelled) once what was accepted is answered. */
  private stopping = false
  /** Set by the executor while the CLI runs: interrupts its current turn. */
  interruptTurn: (() => void) | undefined

  get isClosed (): boolean { return this.closed }
  get stopRequested (): boolean { return this.stopping }
  /** Turns waiting for the agent, and the bytes they hold. */
  get waiting (): { messages: number, bytes: number } { return { messages: this.queue.length, bytes: this.bytes } }

  /**
   * Accept a message for the agent: its id, or undefined once the run takes no more. Beyond
   * `limits` it is refused (`MessageQueueFull`); without, it is taken as it comes (the messages
   * that waited in a cluster's queue, capped there).
   */
  post (turn: UserTurn, id: string = randomUUID(), limits?: QueueLimits): string | undefined {
    if (this.closed || this.stopping) return undefined
    const size = turnBytes(turn)
    if (limits !== undefined) checkRoom(this.queue.length, this.bytes, size, limits)
    this.queue.push({ id, ...turn })
    this.bytes += size
    return id
  }

  /**
   * Stop the agent's current turn. With a prompt, that prompt is its next turn (ahead of any
   * queued message, and counted with them against `limits`) and the run goes on; without, the run
   * ends after it. False once closed.
   */
  interrupt (turn?: UserTurn, limits?: QueueLimits): boolean {
    if (this.closed || this.stopping) return false
    if (turn !== undefined) {
      const size = turnBytes(turn)
      if (limits !== undefined) checkRoom(this.queue.length, this.bytes, size, limits)
      this.queue.unshift({ id: randomUUID(), ...turn })
      this.bytes += size
    } else this.stopping = true
    this.interruptTurn?.()
    return true
  }

  /** The next turn to hand over (it leaves the queue); when none waits, the inbox closes (and this returns undefined). */
  takeOrClose (): QueuedTurn | undefined {
    const next = this.queue.shift()
    if (next === undefined) this.closed = true
    else this.bytes -= turnBytes(next)
    return next
  }

  /** No more input (the run ended early). What was queued is not handed over, and not kept. */
  close (): void {
    this.closed = true
    this.queue = []
    this.bytes = 0
  }
}
