import fp from 'fastify-plugin'
import type { OutgoingHttpHeaders } from 'node:http'
import { openEventStream } from '../src/sse.js'

declare module 'fastify' {
  interface FastifyReply {
    /**
     * Take over the response and stream a run's events with `seq > after` as Server-Sent Events:
     * from its log, then live, until its `result` (then the stream ends). `onClientGone` is
     * called if the client leaves first.
     */
    streamRun: (runId: string, after: number, opts?: { onClientGone?: () => void }) => Promise<void>
  }
}

/** SSE for run events, shared by `/api/execute/stream` and `/api/runs/{id}/events`. */
export default fp(async (fastify) => {
  const { sseKeepAliveMs } = fastify.config
  fastify.decorateReply('streamRun', async function (runId: string, after: number, opts: { onClientGone?: () => void } = {}) {
    this.hijack()
    const raw = this.raw
    // CORS and other headers hooks have set so far.
    const sse = openEventStream(raw, this.getHeaders() as OutgoingHttpHeaders, sseKeepAliveMs)
    const gone = new AbortController()
    let complete = false
    raw.on('close', () => {
      gone.abort()
      if (!complete) opts.onClientGone?.()
    })
    complete = await fastify.engine.follow(runId, after, e => sse.send(e), async () => await sse.drained(), gone.signal)
    sse.end()
  })
}, { name: 'sse', dependencies: ['config', 'engine'] })
