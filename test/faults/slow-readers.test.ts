import { test } from 'tap'
import { connect, type Socket } from 'node:net'
import { auth, build, eventually, listen, readSse } from '../helper.js'

const TOKENS = 30_000

test('fifty SSE clients that never read do not slow or cut a chatty run', async t => {
  const { app, model } = await build(t)
  const words = Array.from({ length: TOKENS }, (_, i) => `w${i} `)
  model.on('chatty', [{ text: words, deltas: true }])
  const base = await listen(app)
  const { port } = new URL(base)
  const run = (await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'chatty', include_partial_messages: true } })).json()
  t.equal(run.status === 'queued' || run.status === 'running', true, 'accepted')

  // Fifty listeners that send their request, then never read a byte: their receive windows fill.
  const stalled: Socket[] = []
  for (let i = 0; i < 50; i++) {
    const s = connect(Number(port), '127.0.0.1')
    s.setNoDelay(true)
    s.on('error', () => {})
    s.write(`GET /api/runs/${run.id}/events HTTP/1.1\r\nhost: x\r\nx-api-key: ${auth['x-api-key']}\r\n\r\n`)
    s.pause()
    stalled.push(s)
  }
  t.teardown(() => { for (const s of stalled) s.destroy() })

  const ended = await eventually(async () => {
    const r = (await app.inject({ method: 'GET', url: `/api/runs/${run.id}`, headers: auth })).json()
    return r.status !== 'queued' && r.status !== 'running'
  }, 120_000)
  t.ok(ended, 'the run ended')
  const view = (await app.inject({ method: 'GET', url: `/api/runs/${run.id}`, headers: auth })).json()
  t.equal(view.status, 'succeeded', `the run succeeded (${view.result?.error ?? ''})`)
  t.equal(view.result.output, words.join(''), 'its whole output')

  // A late reader still gets every token from the log.
  const res = await fetch(`${base}/api/runs/${run.id}/events`, { headers: auth })
  const { events } = await readSse(res)
  const text = events.filter(e => e.event === 'text_delta' || e.event === 'text').map(e => JSON.parse(e.data).text as string).join('')
  t.ok(text.includes(`w${TOKENS - 1} `), 'the replay holds the last token')
  t.equal(events.at(-1)?.event, 'result')
})
