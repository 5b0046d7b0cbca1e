import type { RunEvent } from '../domain/run.js'

/** A run as the request that started it holds it: on one machine its `RunHandle`, in a cluster a `RemoteRun`. */
export interface SubmittedRun {
  readonly id: string
  /** Ask the run to end, wherever it runs. Idempotent. */
  cancel: (reason: string) => void
  /** Settles once the run has ended (its `result` event is out). */
  readonly result: Promise<unknown>
  /** The result as JSON, exactly as the `result` event carries it (set once `result` settles). */
  readonly resultJson: string
}

/**
 * A run submitted to the cluster's queue, which any instance may execute: its end is learnt by
 * following its events (the bus, then the store), only when someone asks for `result`.
 */
export class RemoteRun implements SubmittedRun {
  private following: Promise<void> | undefined
  private json = ''
  private readonly stop = new AbortController()

  constructor (
    readonly id: string,
    readonly submittedAt: number,
    private readonly ops: {
      cancel: (reason: string) => Promise<void>
      follow: (write: (e: RunEvent) => boolean, signal: AbortSignal) => Promise<boolean>
    }
  ) {}

  cancel (reason: string): void {
    void this.ops.cancel(reason).catch(() => { /* over already, or the store is away: its owner ends it */ })
  }

  get result (): Promise<unknown> {
    this.following ??= this.ops.follow(e => {
      if (e.type === 'result') this.json = e.data
      return true
    }, this.stop.signal).then(() => {})
    return this.following
  }

  get resultJson (): string { return this.json }
}
