import type { RunLimits } from './limits.js'

/** What admission needs to know of the API key a run is started with. */
export interface KeyLimits {
  name: string
  maxConcurrentRuns?: number
  dailyBudgetUsd?: number
  /** Admin keys may continue any key's session. */
  anySession?: boolean
  /** Resource limits for its runs, narrower than the server's. */
  runLimits?: RunLimits
}

/** The start of the UTC day `now` falls in, and seconds until the next one. */
export function utcDay (now: number): { start: number, secondsLeft: number } {
  const d = new Date(now)
  const start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate())
  return { start, secondsLeft: Math.ceil((start + 86_400_000 - now) / 1000) }
}
