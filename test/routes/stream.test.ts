import { test } from 'tap'
import { auth, build, listen, readSse } from '../helper.js'

const post = async (base: string, body: unknown, headers: Record<string, string> = auth) =>
  await fetch(`${base}/api/execute/stream`, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify(body) })

test('the stream: run first, messages and text in order with increasing ids, result last, exactly once', async t => {
  const { app, box, model } = await build(t, { env: { SSE_KEEPALIVE_MS: '200' } })
  const base = await listen(app)
  model.on('count slowly', [{ text: ['one', 'two', 'three'], gapMs: 700 }])
  const res = await post(base, { prompt: 'count slowly' })
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /^text\/event-stream/)
  t.equal(res.headers.get('cache-control'), 'no-cache, no-transform')
  t.equal(res.headers.get('x-accel-buffering'), 'no')
  const { events, comments } = await readSse(res)

  t.equal(events[0]?.event, 'run', 'run comes first')
  const run = JSON.parse(events[0]!.data)
  t.equal(run.working_directory, box.work)
  t.match(run.run_id, /^[0-9a-f-]{36}$/)
  t.match(run.session_id, /^[0-9a-f-]{36}$/)
  t.same(events.map(e => e.id), events.map((_, i) => i + 1), 'ids increase from 1 without gaps')
  t.equal(events.filter(e => e.event === 'result').length, 1, 'exactly one result')
  t.equal(events.at(-1)?.event, 'result', 'result is last')
  const result = JSON.parse(events.at(-1)!.data)
  t.equal(result.success, true)
  t.equal(result.output, 'three', 'result carries the final text as /api/execute would')
  t.equal(result.run_id, run.run_id)

  const messages = events.filter(e => e.event === 'message').map(e => JSON.parse(e.data))
  t.equal(messages[0]?.type, 'system')
  t.equal(messages[0]?.subtype, 'init')
  t.equal(messages.at(-1)?.type, 'result', 'the CLI\'s own result line passes through verbatim')
  const texts = events.filter(e => e.event === 'text').map(e => JSON.parse(e.data).text)
  t.same(texts, ['one', 'two', 'three'], 'text events carry the answer piece by piece')

  // Events arrive while the run is still going, not all at the end.
  const textTimes = events.filter(e => e.event === 'text').map(e => e.at)
  t.ok(textTimes[2]! - textTimes[0]! >= 1000, `text events spread over the run (${textTimes[2]! - textTimes[0]!} ms apart)`)
  t.ok(events.at(-1)!.at - textTimes[0]! >= 1000, 'the first text arrived well before the result')
  t.ok(comments >= 1, `keep-alive comments were sent (${comments})`)
})

test('include_partial_messages adds stream_event messages and token-level text', async t => {
  const { app, model } = await build(t)
  const base = await listen(app)
  model.on('partial please', [{ text: ['Hel', 'lo'] }])
  const { events } = await readSse(await post(base, { prompt: 'partial please', include_partial_messages: true }))
  const types = events.filter(e => e.event === 'message').map(e => JSON.parse(e.data).type)
  t.ok(types.includes('stream_event'), 'stream_event lines pass through')
  t.same(events.filter(e => e.event === 'text').map(e => JSON.parse(e.data).text), ['Hel', 'lo'], 'text from deltas, not repeated from the full message')
})

test('errors before the stream are plain problem+json responses', async t => {
  const { app } = await build(t, { env: { MAX_CONCURRENT_RUNS: '1', MAX_QUEUED_RUNS: '0' } })
  const base = await listen(app)
  const bad = await post(base, { prompt: '' })
  t.equal(bad.status, 400)
  t.match(bad.headers.get('content-type'), /^application\/problem\+json/)
  t.equal((await bad.json()).code, 'invalid_request')
  const unauth = await post(base, { prompt: 'x' }, {})
  t.equal(unauth.status, 401)
  const forbidden = await post(base, { prompt: 'x', working_directory: '/' })
  t.equal(forbidden.status, 403)
  t.equal((await forbidden.json()).code, 'working_directory_forbidden')
})

test('the stream field is ignored on the stream endpoint', async t => {
  const { app } = await build(t)
  const base = await listen(app)
  const { events } = await readSse(await post(base, { prompt: 'hi', stream: false }))
  t.equal(JSON.parse(events.at(-1)!.data).success, true)
})
