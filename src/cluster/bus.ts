import type { RunEvent } from '../domain/run.js'
import { LocalEventBus } from '../store/event-bus.js'
import type { RunStore } from '../store/store.js'

/**
 * The event bus of a cluster: events of runs this instance executes fan out in process, as with
 * one server; events written by other instances arrive as notifications that carry only ids
 * (`runId first last origin`), and are read from the events table, once per instance however many
 * of its clients follow the run. Delivery stays at most once and in order per run: a follower that
 * sees a gap reads the store (see `RunLog.follow`).
 */
export class ClusterEventBus extends LocalEventBus {
  /** Per followed run: the last seq read for it here, and the reads under way (one at a time). */
  private readonly reads = new Map<string, { cursor: number, chain: Promise<void> }>()

  constructor (private readonly store: RunStore, private readonly origin: string) {
    super()
  }

  override subscribe (runId: string, listener: (event: RunEvent) => void): () => void {
    const off = super.subscribe(runId, listener)
    return () => {
      off()
      if (!this.has(runId)) this.reads.delete(runId)
    }
  }

  /** A notification from `ccapi_events`: read and fan out what another instance committed. */
  notified (payload: string): void {
    const [runId, first, last, origin] = payload.split(' ')
    if (runId === undefined || origin === this.origin || !this.has(runId)) return
    const from = Number(first)
    const to = Number(last)
    if (!Number.isInteger(from) || !Number.isInteger(to)) return
    let read = this.reads.get(runId)
    if (read === undefined) {
      read = { cursor: from - 1, chain: Promise.resolve() }
      this.reads.set(runId, read)
    }
    const r = read
    r.chain = r.chain.then(async () => {
      if (r.cursor >= to || !this.has(runId)) return
      const events = await this.store.eventsAfter(runId, r.cursor, Math.max(1, to - r.cursor))
      for (const e of events) {
        if (e.seq <= r.cursor) continue
        r.cursor = e.seq
        this.publish(runId, e as RunEvent)
      }
    }).catch(() => { /* followers find a gap and read the store themselves */ })
  }
}
