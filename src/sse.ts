import type { ServerResponse } from 'node:http'

/**
 * Writes Server-Sent Events to a response: `id:`/`event:`/`data:` frames and a comment line at
 * least every `keepAliveMs`, so proxies and clients never see an idle connection. Reports
 * backpressure through `onCongested`/`onDrained`, so the producer can pause instead of buffering.
 */
export class SseWriter {
  private readonly timer: NodeJS.Timeout
  private closed = false

  constructor (
    private readonly res: ServerResponse,
    keepAliveMs: number,
    private readonly flow: { onCongested: () => void, onDrained: () => void }
  ) {
    this.timer = setInterval(() => this.raw(': keep-alive\n\n'), keepAliveMs)
    this.timer.unref()
    res.on('drain', () => this.flow.onDrained())
    res.on('close', () => this.stop())
  }

  /** Send one event; `data` is sent as is when a string (it must be one line), else as JSON. */
  send (id: number, event: string, data: unknown): void {
    const payload = typeof data === 'string' ? data : JSON.stringify(data)
    this.raw(`id: ${id}\nevent: ${event}\ndata: ${payload}\n\n`)
  }

  /** End the stream. */
  end (): void {
    this.stop()
    if (!this.res.writableEnded) this.res.end()
  }

  get isClosed (): boolean { return this.closed }

  private raw (text: string): void {
    if (this.closed || this.res.writableEnded) return
    if (!this.res.write(text)) this.flow.onCongested()
  }

  private stop (): void {
    this.closed = true
    clearInterval(this.timer)
  }
}
