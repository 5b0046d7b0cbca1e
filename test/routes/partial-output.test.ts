import { test } from 'tap'
import { auth, build, listen } from '../helper.js'

const FIRST = 'Here is what I found so far.'

test('a run cancelled after it streamed text keeps that text as its output', async t => {
  const { app, model } = await build(t)
  model.on('slow answer', [{ text: [FIRST, 'And the rest.'], gapMs: 20_000 }])
  const base = await listen(app)
  const run = (await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'slow answer' } })).json()
  // Follow the run until its first text event arrives.
  const stream = await fetch(`${base}/api/runs/${run.id}/events`, { headers: auth })
  const decoder = new TextDecoder()
  let seen = ''
  for await (const chunk of stream.body as unknown as AsyncIterable<Uint8Array>) {
    seen += decoder.decode(chunk, { stream: true })
    if (seen.includes('event: text')) break
  }
  t.match(seen, FIRST, 'the first part was streamed')
  const cancelled = (await app.inject({ method: 'POST', url: `/api/runs/${run.id}/cancel`, headers: auth })).json()
  t.equal(cancelled.status, 'cancelled')
  t.equal(cancelled.result.output, FIRST, 'output holds the streamed text')
  t.equal(cancelled.result.truncated, false)
  t.notMatch(cancelled.result.output, /And the rest/)
})

test('a run that times out after it streamed text keeps that text, blocks joined by a blank line', async t => {
  const { app, model } = await build(t)
  model.on('too slow', [{ text: ['Part one.', 'Part two.', 'Never sent.'], gapMs: 3000 }])
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'too slow', timeout: 5 } })
  const body = res.json()
  t.equal(body.status, 'timed_out')
  t.equal(body.output, 'Part one.\n\nPart two.', 'the text streamed before the limit')
})

test('with include_partial_messages the output is the deltas as streamed', async t => {
  const { app, model } = await build(t)
  model.on('partial slow', [{ text: ['Token stream', ' goes on.', ' Cut here.'], gapMs: 3000 }])
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'partial slow', timeout: 5, include_partial_messages: true } })
  const body = res.json()
  t.equal(body.status, 'timed_out')
  t.equal(body.output, 'Token stream\n\n goes on.', 'the deltas streamed before the limit, a blank line between blocks')
})

test('a run that ends normally still answers with the CLI\'s own result text', async t => {
  const { app, model } = await build(t)
  model.on('two blocks', [{ text: ['Thinking aloud.', 'Final answer.'] }])
  const body = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'two blocks' } })).json()
  t.equal(body.status, 'succeeded')
  t.equal(body.output, 'Final answer.', 'the result, not the streamed text')
})
