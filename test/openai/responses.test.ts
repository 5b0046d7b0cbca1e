import { test } from 'tap'
import OpenAI from 'openai'
import { API_KEY, build, eventually, listen } from '../helper.js'

/**
 * The Responses API through the official `openai` package, real CLI, fake model: plain, streamed
 * (the typed events), `previous_response_id` continuing the session, `background` polled and
 * cancelled, structured output, and errors.
 */

async function client (t: Parameters<typeof build>[0]) {
  const built = await build(t)
  const base = await listen(built.app)
  return { ...built, base, openai: new OpenAI({ apiKey: API_KEY, baseURL: `${base}/v1`, maxRetries: 0 }) }
}

test('plain, then previous_response_id continues its session; streamed events in order', async t => {
  const { openai, model } = await client(t)
  model.on('remember 7', [{ text: 'Noted: 7.' }])
  model.on('what number?', [{ text: 'It was 7.' }])
  const first = await openai.responses.create({ model: 'claude-code', input: 'remember 7', instructions: 'Be terse.' })
  t.equal(first.status, 'completed')
  t.equal(first.output_text, 'Noted: 7.')
  t.ok((first.usage?.input_tokens ?? 0) > 0 && (first.usage?.output_tokens ?? 0) > 0)
  const second = await openai.responses.create({ model: 'claude-code', input: 'what number?', previous_response_id: first.id })
  t.equal(second.output_text, 'It was 7.')
  t.equal(second.previous_response_id, first.id)
  t.same(model.calls.at(-1)!.userTexts, ['remember 7', 'what number?'], 'the same session, the new turn alone')

  model.on('stream it', [{ text: ['one ', 'two ', 'three'], gapMs: 20, deltas: true }])
  const stream = await openai.responses.create({ model: 'claude-code', input: 'stream it', stream: true })
  const types: string[] = []
  let text = ''
  let final: any
  for await (const e of stream) {
    types.push(e.type)
    if (e.type === 'response.output_text.delta') text += e.delta
    if (e.type === 'response.completed') final = e.response
  }
  t.equal(text, 'one two three')
  t.equal(types[0], 'response.created')
  t.equal(types.at(-1), 'response.completed')
  t.ok(types.filter(x => x === 'response.output_text.delta').length >= 3, 'text deltas as they come')
  t.ok(types.indexOf('response.output_text.done') < types.indexOf('response.completed'))
  t.equal(final.output[0].content[0].text, 'one two three')
})

test('background: answered at once, polled to the end; another cancelled; text.format json_schema', async t => {
  const { openai, model } = await client(t)
  model.on('slowly', [{ tool: 'Bash', input: { command: 'sleep 1; echo ok' } }, { text: 'finally' }])
  const bg = await openai.responses.create({ model: 'claude-code', input: 'slowly', background: true })
  t.match(bg.status, /^(queued|in_progress)$/, 'answered before the run ended')
  let polled = bg
  t.ok(await eventually(async () => (polled = await openai.responses.retrieve(bg.id)).status === 'completed', 60_000), 'polled to completion')
  t.equal(polled.output_text, 'finally')

  model.on('forever', [{ tool: 'Bash', input: { command: 'sleep 30' } }, { text: 'never' }])
  const long = await openai.responses.create({ model: 'claude-code', input: 'forever', background: true })
  await eventually(async () => (await openai.responses.retrieve(long.id)).status === 'in_progress', 30_000)
  const cancelled = await openai.responses.cancel(long.id)
  t.equal(cancelled.status, 'cancelled')

  model.on('json please', [{ tool: 'StructuredOutput', input: { n: 3 } }, { text: 'done' }])
  const structured = await openai.responses.create({ model: 'claude-code', input: 'json please', text: { format: { type: 'json_schema', name: 'n', schema: { type: 'object', properties: { n: { type: 'number' } }, required: ['n'] } } } })
  t.same(JSON.parse(structured.output_text), { n: 3 })

  const missing = await openai.responses.retrieve('00000000-0000-4000-8000-000000000000').catch((e: unknown) => e)
  t.ok(missing instanceof OpenAI.NotFoundError)
  const badPrev = await openai.responses.create({ model: 'claude-code', input: 'x', previous_response_id: '00000000-0000-4000-8000-000000000000' }).catch((e: unknown) => e)
  t.ok(badPrev instanceof OpenAI.NotFoundError)
  t.equal((badPrev as any).param, 'previous_response_id')
})
