import { CapacityExceeded, withProblem } from '../domain/errors.js'

/** A run's place in the scheduler. */
export interface Ticket {
  /** 0 when started (or gone), else the 1-based place in the queue. */
  position: () => number
  /** Give the slot back, or leave the queue. Safe to call more than once. */
  release: () => void
}

interface Entry {
  sessionId: string
  start: () => void
  state: 'queued' | 'running' | 'done'
  startedAt: number
}

/**
 * Admission and ordering of runs: at most `maxConcurrent` at once, one at a time per session,
 * and a FIFO queue of at most `maxQueued` behind them (429 with a `Retry-After` estimate beyond).
 * A queued run whose session is busy waits behind that session's earlier runs without holding up
 * runs of other sessions.
 */
export class Scheduler {
  private readonly queue: Entry[] = []
  private readonly busy = new Set<string>()
  private running = 0
  private paused = false
  /** Moving average of run durations, for `Retry-After`. */
  private avgRunMs = 10_000

  constructor (private readonly maxConcurrent: number, private readonly maxQueued: number) {}

  get active (): number { return this.running }
  get queued (): number { return this.queue.length }

  /** Whether a session has a run going now. */
  isBusy (sessionId: string): boolean { return this.busy.has(sessionId) }

  /** Whether a session has a run going or waiting. */
  hasRuns (sessionId: string): boolean { return this.busy.has(sessionId) || this.queue.some(e => e.sessionId === sessionId) }

  /**
   * Throws `CapacityExceeded` (429) when the run could not start now and the queue is full. A run
   * whose session is busy cannot start now either, so it counts against the queue like any other.
   */
  checkCapacity (sessionId?: string): void {
    // While a slot is free, every queued run of an idle session has started: `busy` is all there is to check.
    const startsNow = !this.paused && this.running < this.maxConcurrent && (sessionId === undefined || !this.busy.has(sessionId))
    if (!startsNow && this.queue.length >= this.maxQueued) {
      const retryAfter = Math.min(300, Math.max(1, Math.ceil(this.avgRunMs / 1000 * (this.queue.length + 1) / this.maxConcurrent)))
      throw withProblem(new CapacityExceeded(`capacity full: ${this.running} runs running and ${this.queue.length} queued (MAX_CONCURRENT_RUNS=${this.maxConcurrent}, MAX_QUEUED_RUNS=${this.maxQueued}); retry later`), { retryAfter })
    }
  }

  /**
   * Queue a run; `start` is called when it may run. With `force`, the queue limit is not checked
   * (runs recovered after a restart were accepted already).
   */
  enter (sessionId: string, start: () => void, force = false): Ticket {
    if (!force) this.checkCapacity(sessionId)
    const entry: Entry = { sessionId, start, state: 'queued', startedAt: 0 }
    this.queue.push(entry)
    this.pump()
    return {
      position: () => entry.state === 'queued' ? this.queue.indexOf(entry) + 1 : 0,
      release: () => {
        if (entry.state === 'queued') {
          this.queue.splice(this.queue.indexOf(entry), 1)
        } else if (entry.state === 'running') {
          this.running--
          this.busy.delete(entry.sessionId)
          this.avgRunMs = this.avgRunMs * 0.8 + (Date.now() - entry.startedAt) * 0.2
        }
        entry.state = 'done'
        this.pump()
      }
    }
  }

  /** Stop starting queued runs (shutdown); they stay queued. */
  pause (): void {
    this.paused = true
  }

  private pump (): void {
    for (let i = 0; i < this.queue.length && !this.paused && this.running < this.maxConcurrent;) {
      const entry = this.queue[i]!
      if (this.busy.has(entry.sessionId)) {
        i++
        continue
      }
      this.queue.splice(i, 1)
      entry.state = 'running'
      entry.startedAt = Date.now()
      this.running++
      this.busy.add(entry.sessionId)
      entry.start()
    }
  }
}
