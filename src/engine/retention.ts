import type { RunStore } from '../store/store.js'
import type { RunnerLogger } from '../domain/logger.js'

const HOUR_MS = 3600_000

/** Retention: finished runs older than `days`, and the oldest beyond `maxRuns`, go (at start and hourly). */
export class Retention {
  private timer: NodeJS.Timeout | undefined

  constructor (private readonly store: RunStore, private readonly limits: { days: number, maxRuns: number }, private readonly log: RunnerLogger) {}

  /** Prune now, then every hour until `stop()`. */
  async start (): Promise<void> {
    await this.pruneNow()
    this.timer = setInterval(() => { void this.pruneNow() }, HOUR_MS)
    this.timer.unref()
  }

  stop (): void {
    clearInterval(this.timer)
  }

  /** One pass; never throws (a failed pass is logged and the next one tries again). */
  async pruneNow (): Promise<number> {
    try {
      const removed = await this.store.prune({ maxAgeMs: this.limits.days * 86_400_000, maxRuns: this.limits.maxRuns })
      if (removed > 0) this.log.info({ removed }, 'pruned old runs')
      return removed
    } catch (err) {
      this.log.error({ err }, 'pruning old runs failed; will retry')
      return 0
    }
  }
}
