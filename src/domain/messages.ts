import { MessageQueueFull, withProblem } from './errors.js'
import type { UserTurn } from './run.js'

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
