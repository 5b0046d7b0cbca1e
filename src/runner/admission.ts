import { CapacityExceeded, withProblem } from '../errors.js'

/** A place in line for a CLI slot. */
export interface Ticket {
  /** Resolves when the run may start. */
  readonly ready: Promise<void>
  /** 0 when running, else the 1-based place in the queue. */
  position: () => number
  /** Give the slot back (or leave the queue). Safe to call more than once. */
  release: () => void
}

/**
 * Admission control: at most `maxConcurrent` runs at once, a FIFO queue of `maxQueued` behind
 * them, and a refusal carrying a `Retry-After` estimate beyond that.
 */
export class Admission {
  private active = 0
  private readonly waiting: Array<{ start: () => void }> = []
  /** Exponential moving average of run durations, for `Retry-After`. */
  private avgRunMs = 10_000

  constructor (private readonly maxConcurrent: number, private readonly maxQueued: number) {}

  get running (): number { return this.active }
  get queued (): number { return this.waiting.length }

  /** Take a slot or a place in the queue; throws `CapacityExceeded` (429) when both are full. */
  enter (): Ticket {
    if (this.active >= this.maxConcurrent && this.waiting.length >= this.maxQueued) {
      const retryAfter = Math.min(300, Math.max(1, Math.ceil(this.avgRunMs / 1000 * (this.waiting.length + 1) / this.maxConcurrent)))
      throw withProblem(new CapacityExceeded(`capacity full: ${this.active} runs running and ${this.waiting.length} queued (MAX_CONCURRENT_RUNS=${this.maxConcurrent}, MAX_QUEUED_RUNS=${this.maxQueued}); retry later`), { retryAfter })
    }
    let state: 'queued' | 'running' | 'done' = 'queued'
    let startedAt = 0
    let resolveReady!: () => void
    const ready = new Promise<void>(resolve => { resolveReady = resolve })
    const entry = {
      start: () => {
        state = 'running'
        startedAt = Date.now()
        this.active++
        resolveReady()
      }
    }
    if (this.active < this.maxConcurrent) entry.start()
    else this.waiting.push(entry)
    return {
      ready,
      position: () => state === 'queued' ? this.waiting.indexOf(entry) + 1 : 0,
      release: () => {
        if (state === 'queued') {
          this.waiting.splice(this.waiting.indexOf(entry), 1)
        } else if (state === 'running') {
          this.active--
          this.avgRunMs = this.avgRunMs * 0.8 + (Date.now() - startedAt) * 0.2
          this.waiting.shift()?.start()
        }
        state = 'done'
      }
    }
  }
}
