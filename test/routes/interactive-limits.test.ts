import { test, type Test } from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { auth, build, eventually, listen, readSse, type SseEvent } from '../helper.js'

// A 1×1 PNG, padded: a valid image of about 3,000 bytes as base64.
const PNG = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==', 'base64')
const IMAGE = { type: 'image', media_type: 'image/png', data: Buffer.concat([PNG, Buffer.alloc(2200)]).toString('base64') }

test('a run\'s message queue is bounded: MAX_QUEUED_MESSAGES and MAX_QUEUED_MESSAGE_BYTES, 429 message_queue_full beyond; a taken message frees its place', async t => {
  const { app, model, box } = await build(t, { env: { MAX_QUEUED_MESSAGES: '3', MAX_QUEUED_MESSAGE_BYTES: '4096', MAX_CONCURRENT_RUNS: '1' } })
  const base = await listen(app)
  const gate = (name: string) => {
    const file = join(box.home, name)
    // The agent's Bash waits for the test to open the gate: the turn lasts exactly as long as the test wants.
    return { command: `sh -c "until [ -e ${file} ]; do sleep 0.05; done"`, open: () => writeFileSync(file, '') }
  }
  const first = gate('first-gate')
  const second = gate('second-gate')
  model.on('hold the first turn', [{ tool: 'Bash', input: { command: first.command } }, { text: 'First turn done.' }])
  model.on('hold the second turn', [{ tool: 'Bash', input: { command: second.command } }, { text: 'Second turn done.' }])
  model.on('the last message', [{ text: 'Answered the last message.' }])

  const start = async (payload: Record<string, unknown>) => (await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload })).json()
  const send = async (id: string, payload: Record<string, unknown>) => await app.inject({ method: 'POST', url: `/api/runs/${id}/messages`, headers: auth, payload })
  const view = async (id: string) => (await app.inject({ url: `/api/runs/${id}`, headers: auth })).json()
  const ended = async (id: string) => {
    await eventually(async () => !['queued', 'running'].includes((await view(id)).status), 30_000)
    return await view(id)
  }
  const events = async (id: string): Promise<SseEvent[]> => (await readSse(await fetch(`${base}/api/runs/${id}/events`, { headers: auth }))).events
  const refused = (t: Test, res: Awaited<ReturnType<typeof send>>, why: RegExp, what: string) => {
    t.equal(res.statusCode, 429, `${what}: 429`)
    t.match(res.headers['content-type'], /application\/problem\+json/)
    t.equal(res.json().code, 'message_queue_full')
    t.match(res.json().detail, why, `${what}: says which limit`)
    t.ok(Number(res.headers['retry-after']) > 0, `${what}: with Retry-After`)
  }
  /** Fill a run's queue: three accepted (one with an image), one refused by bytes, one by count, an interrupt prompt refused. */
  const fill = async (t: Test, id: string, prompts: [string, string, string]): Promise<string[]> => {
    const accepted: string[] = []
    const one = await send(id, { prompt: prompts[0] })
    t.equal(one.statusCode, 202, one.body)
    accepted.push(one.json().message_id)
    const two = await send(id, { prompt: prompts[1], attachments: [IMAGE] })
    t.equal(two.statusCode, 202, two.body)
    accepted.push(two.json().message_id)
    // About 3,060 bytes wait (the image's base64 is most of it): 1,100 more would pass 4,096.
    refused(t, await send(id, { prompt: 'x'.repeat(1100) }), /MAX_QUEUED_MESSAGE_BYTES=4096/, 'a message over the byte cap')
    const three = await send(id, { prompt: prompts[2] })
    t.equal(three.statusCode, 202, three.body)
    accepted.push(three.json().message_id)
    refused(t, await send(id, { prompt: 'a fourth message' }), /MAX_QUEUED_MESSAGES=3/, 'a fourth message')
    refused(t, await app.inject({ method: 'POST', url: `/api/runs/${id}/interrupt`, headers: auth, payload: { prompt: 'steer somewhere else' } }), /MAX_QUEUED_MESSAGES=3/, 'an interrupt\'s prompt')
    return accepted
  }

  const running = await start({ prompt: 'hold the first turn', allowed_tools: ['Bash(sh *)'] })
  const waiting = await start({ prompt: 'a queued run' })
  t.equal((await view(waiting.id)).status, 'queued', 'MAX_CONCURRENT_RUNS=1: the second run waits for a slot')

  // A running run's queue is its inbox; a queued run's is too, or (in a cluster) rows in the database.
  const fromRunning = await fill(t, running.id, ['hold the second turn', 'a message with an image', 'a third message'])
  const fromQueued = await fill(t, waiting.id, ['b one', 'b two', 'b three'])

  // The agent takes the first message once its first turn ends: a place is free, the rest still wait.
  first.open()
  const ctrl = new AbortController()
  const res = await fetch(`${base}/api/runs/${running.id}/events`, { headers: auth, signal: ctrl.signal })
  await readSse(res, e => { if (e.event === 'user_message' && JSON.parse(e.data).message_id === fromRunning[0]) ctrl.abort() }).catch(() => null)
  const fourth = await send(running.id, { prompt: 'the last message' })
  t.equal(fourth.statusCode, 202, 'once the agent took a message, its place is free again')
  refused(t, await send(running.id, { prompt: 'one too many again' }), /MAX_QUEUED_MESSAGES=3/, 'and the queue is full again')

  second.open()
  const done = await ended(running.id)
  t.equal(done.status, 'succeeded', done.result?.error ?? '')
  t.equal(done.result.output, 'Answered the last message.', 'every accepted message was answered, in order')
  const handed = (await events(running.id)).filter(e => e.event === 'user_message').map(e => JSON.parse(e.data).message_id)
  t.same(handed, [...fromRunning, fourth.json().message_id], 'exactly the accepted messages reached the agent')
  const queued = await ended(waiting.id)
  t.equal(queued.status, 'succeeded', queued.result?.error ?? '')
  t.same((await events(waiting.id)).filter(e => e.event === 'user_message').map(e => JSON.parse(e.data).message_id), fromQueued, 'the queued run\'s accepted messages, once it ran')
  for (const prompt of ['x'.repeat(1100), 'a fourth message', 'steer somewhere else', 'one too many again']) {
    t.notOk(model.calls.some(c => c.userTexts.includes(prompt)), `a refused message never reached the model (${prompt.slice(0, 20)})`)
  }
})
