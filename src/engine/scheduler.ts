import type { Capacity } from '../domain/admission.js'

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
 * and a FIFO queue of at most `maxQueued` behind them (`capacity` says whether a run fits, with a
 * `Retry-After` estimate when not).
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
   * Whether a run could start now or wait in the queue (`maxQueued`); a run whose session is busy
   * cannot start now either, so it counts against the queue like any other.
   */
  capacity (sessionId?: string): Capacity {
    // While a slot is free, every queued run of an idle session has started: `busy` is all there is to check.
    const startsNow = !this.paused && this.running < this.maxConcurrent && (sessionId === undefined || !this.busy.has(sessionId))
    if (startsNow || this.queue.length < this.maxQueued) return { room: true }
    return {
      room: false,
      running: this.running,
      queued: this.queue.length,
      limits: `MAX_CONCURRENT_RUNS=${this.maxConcurrent}, MAX_QUEUED_RUNS=${this.maxQueued}`,
      retryAfter: Math.min(300, Math.max(1, Math.ceil(this.avgRunMs / 1000 * (this.queue.length + 1) / this.maxConcurrent)))
    }
  }

  /** Queue a run (admission has decided it may); `start` is called when it may run. */
  enter (sessionId: string, start: () => void): Ticket {
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
