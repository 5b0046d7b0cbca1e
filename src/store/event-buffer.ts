import type { RunResult } from '../domain/run.js'
import type { RunRecord, StoredEvent } from '../domain/records.js'
import { pageOfEvents } from './rows.js'
import { MAX_UNFLUSHED_EVENTS } from './store.js'
import { WriteRetry, type WriteReports } from './write-retry.js'

/** An appended event, waiting to be written. */
export interface PendingEvent { runId: string, seq: number, type: string, data: string }

/** A run's end as it is written: its status, its result (the JSON text) and when it ended. */
export interface RunEnd { runId: string, status: string, result: string, endedAt: number }

/**
 * One write, in one transaction: the events (a `(runId, seq)` stored already is skipped, so a
 * replay never fails a batch), then the ends of runs (those of the `result` events among them
 * first, then those `markFinished` recorded).
 */
export interface Batch { events: PendingEvent[], ends: RunEnd[] }

/**
 * How a backend writes a batch: at once, returning nothing (SQLite), or returning the promise of
 * its commit (PostgreSQL). Throws (or rejects) when nothing of it was written.
 */
export type WriteBatch = (batch: Batch) => void | Promise<void>

export interface BufferOptions extends WriteReports {
  /** Events are written at least this often (ms)... */
  flushIntervalMs?: number
  /** ... and as soon as this many are waiting (at most `MAX_UNFLUSHED_EVENTS`, which recovery relies on)... */
  flushMaxEvents?: number
  /** ... or they hold this many bytes (a chatty run's big lines stay bounded). */
  flushMaxBytes?: number
}

/** The end a `result` event carries: its status, and its time (else now). */
function endOfResult (e: PendingEvent): RunEnd | undefined {
  let result: { status?: unknown, timestamp?: unknown }
  try {
    result = JSON.parse(e.data)
  } catch {
    return undefined
  }
  if (typeof result !== 'object' || result === null || typeof result.status !== 'string') return undefined
  const at = typeof result.timestamp === 'string' ? Date.parse(result.timestamp) : Number.NaN
  return { runId: e.runId, status: result.status, result: e.data, endedAt: Number.isFinite(at) ? at : Date.now() }
}

const ignore = (): void => {}

/**
 * The write-behind buffer of a store's event log, the same for every backend: appended events are
 * readable at once (`page`, `lastSeq`) and written in batches, at least every `flushIntervalMs`
 * and as soon as `flushMaxEvents` (or `flushMaxBytes`) wait, one write at a time; they stay
 * readable here until their write has gone through. Run ends recorded by `finish` are read back at
 * once and written with the next batch, after the run's events. While writes fail, everything stays
 * queued and the next attempt waits (`WriteRetry`): until it is due, `flush()` fails at once,
 * untried, and `check()` says the store is unavailable until a write goes through.
 */
export class EventBuffer {
  private readonly pending: PendingEvent[] = []
  private pendingBytes = 0
  /** Run ends not written yet: what `markFinished` recorded. */
  private readonly ends = new Map<string, RunEnd & { record: RunResult }>()
  private readonly retry: WriteRetry
  private readonly timer: NodeJS.Timeout
  private readonly maxEvents: number
  private readonly maxBytes: number
  /** The write under way (asynchronous backends), and the one to follow it. */
  private flight: Promise<void> | undefined
  private next: Promise<void> | undefined

  constructor (private readonly write: WriteBatch, opts: BufferOptions = {}) {
    this.retry = new WriteRetry({ ...(opts.onError !== undefined ? { onError: opts.onError } : {}), ...(opts.onRecovered !== undefined ? { onRecovered: opts.onRecovered } : {}) })
    this.maxEvents = Math.min(opts.flushMaxEvents ?? MAX_UNFLUSHED_EVENTS, MAX_UNFLUSHED_EVENTS)
    this.maxBytes = opts.flushMaxBytes ?? 1024 * 1024
    this.timer = setInterval(() => {
      // A failing write must not crash the server from a timer: reported once, tried again when due.
      if ((this.pending.length > 0 || this.ends.size > 0) && this.flight === undefined && this.retry.due()) this.flush().catch(ignore)
    }, opts.flushIntervalMs ?? 25)
    this.timer.unref()
  }

  /** Queue an event; written with the next batch. Never throws. */
  append (runId: string, seq: number, type: string, data: string): void {
    this.pending.push({ runId, seq, type, data })
    this.pendingBytes += data.length
    // While writes fail, the timer retries when due: appends do not hammer a full disk.
    if ((this.pending.length >= this.maxEvents || this.pendingBytes >= this.maxBytes) && this.flight === undefined && this.retry.due()) this.flush().catch(ignore)
  }

  /** Record a run's end: read back at once (`withEnd`), written with the next batch, after its events. */
  async finish (runId: string, result: RunResult, endedAt: number): Promise<void> {
    this.ends.set(runId, { runId, status: result.status, result: JSON.stringify(result), endedAt, record: result })
    await this.flush()
  }

  /** Whether a run's end is recorded and not written yet (being written, or waiting). */
  get endsWaiting (): boolean { return this.ends.size > 0 }

  /** A stored run as this process knows it: ended, when its end is recorded and not written yet. */
  withEnd (record: RunRecord): RunRecord {
    const end = this.ends.get(record.id)
    return end === undefined ? record : { ...record, status: end.record.status, endedAt: end.endedAt, result: end.record, spec: null }
  }

  /** A page of stored runs as this process knows them (`withEnd`), those no longer of `status` left out. */
  withEnds (records: RunRecord[], status?: string): RunRecord[] {
    if (this.ends.size === 0) return records
    return records.map(r => this.withEnd(r)).filter(r => status === undefined || r.status === status)
  }

  /**
   * A page of a run's events with `seq > after`: the stored ones (`stored` reads at most `limit`),
   * then the waiting ones. The waiting ones are taken first: one written meanwhile is then read
   * from the store, and a duplicate is dropped by its seq. Stored rows given synchronously (an
   * iterator) are read in the same tick, only as far as the page goes.
   */
  async page (runId: string, after: number, limit: number, maxBytes: number, stored: () => Iterable<StoredEvent> | Promise<Iterable<StoredEvent>>): Promise<StoredEvent[]> {
    const waiting = this.pending.filter(e => e.runId === runId && e.seq > after)
    const rows = stored()
    return pageOfEvents(rows instanceof Promise ? await rows : rows, waiting, after, limit, maxBytes)
  }

  /** The highest seq of a run: the stored one, or a waiting event's. */
  lastSeq (runId: string, stored: number): number {
    let seq = stored
    for (const e of this.pending) if (e.runId === runId && e.seq > seq) seq = e.seq
    return seq
  }

  /** Throws why the event log cannot be written, while the last write failed and none has gone through since. */
  check (): void {
    if (this.retry.failing) throw this.retry.lastError ?? new Error('the event log cannot be written')
  }

  /**
   * Write what is waiting (events and ends), after the write under way if there is one. While
   * writes fail and the next attempt is not due, fails at once, untried (unless `force`: at close).
   */
  async flush (force = false): Promise<void> {
    if (this.flight !== undefined) {
      // One write at a time: the next takes whatever waits by then, for every caller meanwhile.
      this.next ??= this.flight.then(ignore, ignore).then(async () => {
        this.next = undefined
        await this.flush(force)
      })
      return await this.next
    }
    if (!force && !this.retry.due()) throw this.retry.lastError ?? new Error('the event log cannot be written now')
    if (this.pending.length === 0 && this.ends.size === 0) return
    const events = this.pending.slice()
    const ends = [...this.ends.values()]
    const batch: Batch = {
      events,
      ends: [...events.filter(e => e.type === 'result').map(endOfResult).filter(e => e !== undefined), ...ends.map(({ record, ...end }) => end)]
    }
    let commit: void | Promise<void>
    try {
      commit = this.write(batch)
    } catch (err) {
      this.retry.failed(err as Error)
      throw err
    }
    // A synchronous backend has written it already: nothing else is written in between.
    if (commit === undefined) return this.written(events, ends)
    const flight = commit.then(() => this.written(events, ends), (err: Error) => {
      this.retry.failed(err)
      throw err
    })
    this.flight = flight.then(ignore, ignore).then(() => { this.flight = undefined })
    await flight
  }

  /** Wait for the write under way (and the one queued after it), whatever becomes of them. */
  async settled (): Promise<void> {
    await (this.next ?? this.flight)?.catch(ignore)
  }

  /** Stop the timer and write what waits, trying once more even while writes fail. */
  async close (): Promise<void> {
    clearInterval(this.timer)
    await this.settled()
    await this.flush(true)
  }

  /** A batch went through: its events and ends no longer wait (those appended or recorded meanwhile do). */
  private written (events: PendingEvent[], ends: Array<RunEnd & { record: RunResult }>): void {
    this.pending.splice(0, events.length)
    for (const e of events) this.pendingBytes -= e.data.length
    for (const end of ends) if (this.ends.get(end.runId) === end) this.ends.delete(end.runId)
    this.retry.succeeded()
  }
}
