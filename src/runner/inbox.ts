import { randomUUID } from 'node:crypto'
import { MessageQueueFull, withProblem } from '../errors.js'
import type { UserTurn } from './types.js'

/** How much may wait for the agent at once: messages, and their bytes. */
export interface QueueLimits {
  /** `MAX_QUEUED_MESSAGES` */
  maxMessages: number
  /** `MAX_QUEUED_MESSAGE_BYTES` */
  maxBytes: number
}

/** A full queue empties as the agent answers turns: a retry after this many seconds may fit. */
export const QUEUE_RETRY_AFTER_S = 5

/** What a turn holds in memory while it waits: its prompt's bytes and its images' (base64, as sent). */
export function turnBytes (turn: UserTurn): number {
  let bytes = Buffer.byteLength(turn.prompt)
  for (const a of turn.attachments ?? []) bytes += a.data.length
  return bytes
}

/**
 * Refuse a turn that does not fit beside `waiting` turns of `bytes` (`message_queue_full`). One turn
 * always fits an empty queue, whatever its size: the body limit bounds it, and a client could
 * never get it in by waiting.
 */
export function checkRoom (waiting: number, bytes: number, size: number, limits: QueueLimits): void {
  const full = waiting >= limits.maxMessages
    ? `${waiting} messages are waiting for the agent (MAX_QUEUED_MESSAGES=${limits.maxMessages})`
    : waiting > 0 && bytes + size > limits.maxBytes
      ? `the ${waiting} messages waiting for the agent hold ${bytes} bytes, and this one's ${size} would pass MAX_QUEUED_MESSAGE_BYTES=${limits.maxBytes}`
      : undefined
  if (full !== undefined) throw withProblem(new MessageQueueFull(`${full}; retry once the agent has taken some`), { retryAfter: QUEUE_RETRY_AFTER_S })
}

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
