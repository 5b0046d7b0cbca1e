import type { RunEvent } from '../domain/run.js'
import type { EventBus } from './store.js'

/** The event bus of one process: a fan-out per run, synchronous and in order. */
export class LocalEventBus implements EventBus {
  private readonly listeners = new Map<string, Set<(event: RunEvent) => void>>()

  publish (runId: string, event: RunEvent): void {
    const set = this.listeners.get(runId)
    if (set === undefined) return
    // A copy: a listener may unsubscribe (or subscribe) while it is called.
    for (const l of [...set]) l(event)
  }

  subscribe (runId: string, listener: (event: RunEvent) => void): () => void {
    let set = this.listeners.get(runId)
    if (set === undefined) {
      set = new Set()
      this.listeners.set(runId, set)
    }
    set.add(listener)
    return () => {
      set.delete(listener)
      if (set.size === 0 && this.listeners.get(runId) === set) this.listeners.delete(runId)
    }
  }

  /** Whether a run has listeners here. */
  has (runId: string): boolean {
    return this.listeners.has(runId)
  }

  /** Runs with listeners now (for tests: nothing may leak). */
  get size (): number {
    return this.listeners.size
  }
}
