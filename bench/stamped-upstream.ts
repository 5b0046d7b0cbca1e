/**
 * A stamped model stream for the broker rows (8 and 11): an upstream whose events carry the moment
 * they were written, and a reader that turns each into its latency on arrival.
 */
import { createServer as createHttpServer } from 'node:http'

/**
 * A stand-in upstream for the broker row: a Messages stream of `count` events, each stamped with
 * the moment it is written (this process's clock), `gapMs` apart.
 */
export async function stampingUpstream (count: number, gapMs: number): Promise<{ url: string, close: () => Promise<void> }> {
  const server = createHttpServer((req, res) => {
    req.resume()
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      let i = 0
      const tick = (): void => {
        if (i++ >= count) { res.end(); return }
        res.write(`event: content_block_delta\ndata: {"t":${performance.now()}}\n\n`)
        setTimeout(tick, gapMs)
      }
      tick()
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, close: async () => await new Promise<void>(resolve => server.close(() => resolve())) }
}

/** How long each event of a stream took from being written upstream to arriving here, ms. */
export async function eventLatencies (url: string, key: string): Promise<number[]> {
  const res = await fetch(`${url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body: '{}' })
  const out: number[] = []
  let buffer = ''
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    const now = performance.now()
    buffer += Buffer.from(chunk).toString()
    let end
    while ((end = buffer.indexOf('\n\n')) !== -1) {
      const m = /"t":([\d.]+)/.exec(buffer.slice(0, end))
      if (m !== null) out.push(now - Number(m[1]))
      buffer = buffer.slice(end + 2)
    }
  }
  return out
}
