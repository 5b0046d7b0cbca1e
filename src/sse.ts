import type { OutgoingHttpHeaders, ServerResponse } from 'node:http'
import type { RunEvent } from './domain/run.js'

/**
 * Writes Server-Sent Events to a response: `id:`/`event:`/`data:` frames and a comment line at
 * least every `keepAliveMs`, so proxies and clients never see an idle connection. `send` reports
 * backpressure (false: wait for `drained()` before sending more).
 */
export class SseWriter {
  private readonly timer: NodeJS.Timeout
  private closed = false

  constructor (private readonly res: ServerResponse, keepAliveMs: number) {
    this.timer = setInterval(() => this.raw(': keep-alive\n\n'), keepAliveMs)
    this.timer.unref()
    res.on('close', () => this.stop())
  }

  /** Send one event; its `data` is one line of JSON. */
  send (e: RunEvent): boolean {
    if (this.closed || this.res.writableEnded) return true
    // Written in pieces under cork (one packet, no copy of a big `data` into a new frame string).
    this.res.cork()
    this.res.write(`id: ${e.seq}\nevent: ${e.type}\ndata: `)
    this.res.write(e.data)
    const ok = this.res.write('\n\n')
    process.nextTick(() => this.res.uncork())
    return ok
  }

  /** Send one frame of another protocol's events: `event:` (if named) and one line of `data:`. */
  frame (data: string, event?: string): boolean {
    if (this.closed || this.res.writableEnded) return true
    return this.res.write(`${event !== undefined ? `event: ${event}\n` : ''}data: ${data}\n\n`)
  }

  /** Resolves when the socket can take more, or is gone. */
  async drained (): Promise<void> {
    if (this.closed || !this.res.writableNeedDrain) return
    await new Promise<void>(resolve => {
      const done = (): void => {
        this.res.off('drain', done)
        this.res.off('close', done)
        resolve()
      }
      this.res.on('drain', done)
      this.res.on('close', done)
    })
  }

  /** End the stream. */
  end (): void {
    this.stop()
    if (!this.res.writableEnded) this.res.end()
  }

  private raw (text: string): boolean {
    if (this.closed || this.res.writableEnded) return true
    return this.res.write(text)
  }

  private stop (): void {
    this.closed = true
    clearInterval(this.timer)
  }
}

/**
 * Start an event stream on `res`: status 200, the headers the response already had (`headers`:
 * CORS, a run's ids) and those no proxy may buffer or transform; then a writer for its events.
 */
export function openEventStream (res: ServerResponse, headers: OutgoingHttpHeaders, keepAliveMs: number): SseWriter {
  res.writeHead(200, {
    ...headers,
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    'x-accel-buffering': 'no',
    connection: 'keep-alive'
  })
  res.flushHeaders()
  return new SseWriter(res, keepAliveMs)
}
