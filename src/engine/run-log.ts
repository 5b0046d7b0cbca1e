import type { EventBus, RunStore } from '../store/store.js'
import type { RunEvent, RunEventType } from '../domain/run.js'

/** Events per replay page. */
export const REPLAY_PAGE = 500
/** A replay page holds at most this much data, however big the events. */
export const REPLAY_PAGE_BYTES = 1024 * 1024

/** How a follower receives events and learns of its client's state. */
export interface Follower {
  /** Send one event; false when the client is congested (wait for `drained`). */
  write: (e: RunEvent) => boolean
  drained: () => Promise<void>
  /** Aborts when the client leaves (or the server shuts down). */
  signal: AbortSignal
}

/**
 * A run's event log: appends go to the store (buffered) and to the bus, in order; followers get
 * every event after a given id exactly once, from the store and then live.
 */
export class RunLog {
  /** Appended this tick, to publish once committed. */
  private unpublished: Array<{ runId: string, event: RunEvent }> = []
  /** The commits under way, in order (a store may commit asynchronously). */
  private committing: Promise<void> = Promise.resolve()

  constructor (private readonly store: RunStore, private readonly bus: EventBus) {}

  /**
   * Append an event with the next `seq` (the caller counts). Live followers get it once it is
   * committed: the appends made in one go (a chunk of CLI output) are written in one transaction
   * right after it, then published, so an event any client has received survives a crash of the
   * process (`kill -9`). Where the store cannot write (a full disk), events are published all the
   * same and written once it can.
   */
  append (runId: string, seq: number, type: RunEventType, data: string): RunEvent {
    const event: RunEvent = { seq, type, data }
    this.store.appendEvent(runId, seq, type, data)
    if (this.unpublished.push({ runId, event }) === 1) queueMicrotask(this.commit)
    return event
  }

  private readonly commit = (): void => {
    const batch = this.unpublished
    this.unpublished = []
    this.committing = this.committing
      .then(async () => await this.store.flush())
      .catch(() => { /* kept by the store for its next write; followers need not wait for it */ })
      .then(() => { for (const { runId, event } of batch) this.bus.publish(runId, event) })
  }

  /** Once every event appended so far is committed and published (followers have had it). */
  async published (): Promise<void> {
    await this.committing
  }

  /**
   * Send a run's events with `seq > after` to the follower, until the terminal `result` (true),
   * or until the follower leaves, or the run is not live and the log holds no more (false: e.g. a
   * run left queued by a shutdown).
   *
   * Attach first, then read: the follower subscribes to the bus before reading the backlog, so an
   * event appended while the backlog is read arrives either in the backlog or live, and
   * duplicates are dropped by `seq`. When the client is congested the subscription is dropped (the
   * server never buffers for a slow client) and reading resumes from the store once it drains.
   */
  async follow (runId: string, after: number, f: Follower, isLive: () => boolean): Promise<boolean> {
    let cursor = after
    /** Deliver one event; 'done' after the result, 'congested' when the client is full. */
    const deliver = (e: RunEvent): 'ok' | 'done' | 'congested' => {
      if (e.seq <= cursor) return 'ok'
      cursor = e.seq
      const ok = f.write(e)
      if (e.type === 'result') return 'done'
      return ok ? 'ok' : 'congested'
    }
    while (!f.signal.aborted) {
      // Until the backlog is read, live events wait in `live`; then they are written as they come,
      // synchronously, until something needs the loop: the result, congestion, a gap, the end.
      const live: RunEvent[] = []
      let direct = false
      let stop: 'done' | 'reread' | undefined
      let wake: (() => void) | undefined
      const unsubscribe = this.bus.subscribe(runId, e => {
        if (!direct) {
          live.push(e)
          return
        }
        if (stop !== undefined || e.seq <= cursor) return
        // A gap means this follower missed events: they are read from the store.
        const r = e.seq > cursor + 1 ? 'congested' : deliver(e)
        if (r === 'ok') return
        stop = r === 'done' ? 'done' : 'reread'
        wake?.()
      })
      try {
        let congested = false
        // The backlog, a page at a time.
        for (;;) {
          const page = await this.store.eventsAfter(runId, cursor, REPLAY_PAGE, REPLAY_PAGE_BYTES)
          for (const e of page) {
            const r = deliver(e as RunEvent)
            if (r === 'done') return true
            if (r === 'congested') { congested = true; break }
          }
          if (congested || page.length === 0 || f.signal.aborted) break
        }
        if (f.signal.aborted) return false
        if (!congested) {
          // What arrived while the backlog was read, then live.
          for (const e of live.splice(0)) {
            if (e.seq <= cursor) continue
            const r = e.seq > cursor + 1 ? 'congested' : deliver(e)
            if (r === 'done') return true
            if (r === 'congested') { congested = true; break }
          }
        }
        if (!congested) {
          direct = true
          while (stop === undefined && !f.signal.aborted) {
            if (!isLive()) {
              // Ended (its result is in the store by now) or never coming back: one last read decides.
              direct = false
              const rest = await this.store.eventsAfter(runId, cursor, REPLAY_PAGE, REPLAY_PAGE_BYTES)
              if (rest.length === 0 && live.length === 0) return false
              stop = 'reread'
              break
            }
            await new Promise<void>(resolve => {
              const done = (): void => {
                clearTimeout(timer)
                f.signal.removeEventListener('abort', done)
                wake = undefined
                resolve()
              }
              // A run can stop being live without a new event (left queued at shutdown): look again now and then.
              const timer = setTimeout(done, 1000)
              timer.unref()
              wake = done
              f.signal.addEventListener('abort', done, { once: true })
            })
          }
          if (stop === 'done') return true
        }
        if (f.signal.aborted) return false
        unsubscribe()
        await f.drained()
      } finally {
        unsubscribe()
      }
    }
    return false
  }
}
