/** The first retry of a failed event-log write comes this soon (ms); each failure doubles it... */
export const RETRY_MIN_MS = 25
/** ... up to this (ms): a full disk costs an attempt every few seconds, and is noticed soon once freed. */
export const RETRY_MAX_MS = 2000

/** What a store tells of its event-log writes: a change of state, never each attempt. */
export interface WriteReports {
  /** Writing started failing (once; the events stay queued and are retried, backing off). */
  onError?: (err: Error) => void
  /** Writing works again, after `failedAttempts` failed attempts (once per failing spell). */
  onRecovered?: (failedAttempts: number) => void
}

/**
 * When a store may try again to write its event log, and what it says about it. While writes
 * work, every flush writes. Once one fails, the next attempt waits 25 ms, then twice as long after
 * each failure up to 2 s, and a success starts over: a full disk costs a handful of attempts a
 * second at first, then one every 2 s, instead of one per tick and per append, each rewriting a
 * growing backlog on the event loop. The failure is reported once, and the recovery once, with
 * the number of failed attempts.
 */
export class WriteRetry {
  private failures = 0
  private nextAt = 0
  private error: Error | undefined

  constructor (private readonly reports: WriteReports = {}) {}

  /** The last write failed (and none has succeeded since). */
  get failing (): boolean { return this.failures > 0 }
  /** Why the last write failed, while it does. */
  get lastError (): Error | undefined { return this.error }

  /** Whether a write may be tried now: always while writes work; while they fail, once the wait is over. */
  due (): boolean {
    return this.failures === 0 || Date.now() >= this.nextAt
  }

  /** A write failed: wait longer before the next. */
  failed (err: Error): void {
    this.failures++
    this.error = err
    this.nextAt = Date.now() + Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(this.failures - 1, 20))
    if (this.failures === 1) this.reports.onError?.(err)
  }

  /** A write went through: back to writing at once. */
  succeeded (): void {
    if (this.failures === 0) return
    const failed = this.failures
    this.failures = 0
    this.error = undefined
    this.reports.onRecovered?.(failed)
  }
}
