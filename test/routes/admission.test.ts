import { test } from 'tap'
import { randomUUID } from 'node:crypto'
import { mkdirSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { sha256Hex } from '../../src/auth/keys.js'
import { auth, build, eventually, sandbox } from '../helper.js'

test('at most MAX_CONCURRENT_RUNS run, MAX_QUEUED_RUNS wait, the rest get 429 with Retry-After', async t => {
  const { app, model } = await build(t, { env: { MAX_CONCURRENT_RUNS: '2', MAX_QUEUED_RUNS: '1' } })
  model.on('hold', [{ text: ['holding', 'released'], gapMs: 1500 }])
  const exec = (prompt: string) => app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt } })
  // One after the other, so the order of admission is the order of sending (in cluster mode,
  // admission is a database transaction: requests sent at the same instant have no order).
  const pause = async (): Promise<void> => { await new Promise(resolve => setTimeout(resolve, 150)) }
  const running = [exec('hold 1')]
  await pause()
  running.push(exec('hold 2'))
  await pause()
  const queued = exec('quick after the queue')
  let health: any
  await eventually(async () => { health = (await app.inject({ url: '/health' })).json(); return health.runs.queued === 1 && health.runs.active === 2 }, 3000)
  t.same(health.runs, { active: 2, queued: 1 }, 'two run, one waits')

  const refused = await exec('one too many')
  t.equal(refused.statusCode, 429)
  t.equal(refused.json().code, 'capacity_exceeded')
  t.match(refused.headers['retry-after'], /^\d+$/, 'Retry-After in seconds')
  t.ok(Number(refused.headers['retry-after']) >= 1)
  t.match(refused.json().detail, /MAX_CONCURRENT_RUNS=2/)

  const results = await Promise.all([...running, queued])
  t.same(results.map(r => r.json().status), ['succeeded', 'succeeded', 'succeeded'], 'every admitted run finished')
  const order = model.calls.map(c => c.prompt)
  t.equal(order.indexOf('quick after the queue'), 2, 'the queued run started only after a slot freed')
  t.notOk(order.includes('one too many'), 'the refused run never started')
})

const KEYS = {
  carol: 'cca_carol-0123456789abcdefghijklmnopqrstuv',
  alice: 'cca_alice-0123456789abcdefghijklmnopqrstuv',
  bob: 'cca_bob-0123456789abcdefghijklmnopqrstuvwxy'
}

/** An app whose key file has carol (1 run at a time), alice and bob. */
async function withKeys (t: Parameters<typeof build>[0], env: Record<string, string> = {}) {
  const box = sandbox(t)
  const file = join(box.home, 'keys.json')
  writeFileSync(file, JSON.stringify({
    keys: [
      { name: 'carol', key_sha256: sha256Hex(KEYS.carol), scopes: ['runs:write', 'runs:read'], max_concurrent_runs: 1 },
      { name: 'alice', key_sha256: sha256Hex(KEYS.alice), scopes: ['runs:write', 'runs:read'] },
      { name: 'bob', key_sha256: sha256Hex(KEYS.bob), scopes: ['runs:write', 'runs:read'] }
    ]
  }))
  return await build(t, { box, env: { API_KEYS_FILE: file, ...env } })
}

test('8 simultaneous POST /api/runs by a key limited to 1 run, each with its own directory and session: exactly 1 is accepted', async t => {
  const { app, box, model } = await withKeys(t)
  model.on('carol holds', [{ text: ['a', 'b'], gapMs: 3000 }])
  for (let i = 0; i < 8; i++) mkdirSync(join(box.work, `dir-${i}`))
  const responses = await Promise.all(Array.from({ length: 8 }, async (_, i) => await app.inject({
    method: 'POST',
    url: '/api/runs',
    headers: { 'x-api-key': KEYS.carol },
    payload: { prompt: `carol holds ${i}`, working_directory: `dir-${i}`, session_id: randomUUID() }
  })))
  const codes = responses.map(r => r.statusCode).sort()
  t.same(codes, [202, 429, 429, 429, 429, 429, 429, 429], 'one 202, seven 429')
  t.ok(responses.filter(r => r.statusCode === 429).every(r => r.json().code === 'key_concurrency_exceeded'))
  const accepted = responses.find(r => r.statusCode === 202)!.json()
  await app.inject({ method: 'POST', url: `/api/runs/${accepted.id}/cancel`, headers: { 'x-api-key': KEYS.carol } })
})

test('a burst of 10 against MAX_CONCURRENT_RUNS=1, MAX_QUEUED_RUNS=2 admits exactly 3', async t => {
  const { app, model } = await build(t, { env: { MAX_CONCURRENT_RUNS: '1', MAX_QUEUED_RUNS: '2' } })
  model.on('burst', [{ text: ['a', 'b'], gapMs: 2000 }])
  const responses = await Promise.all(Array.from({ length: 10 }, async (_, i) =>
    await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: `burst ${i}` } })))
  t.equal(responses.filter(r => r.statusCode === 202).length, 3)
  t.equal(responses.filter(r => r.statusCode === 429 && r.json().code === 'capacity_exceeded').length, 7)
  for (const r of responses.filter(r => r.statusCode === 202)) {
    await app.inject({ method: 'POST', url: `/api/runs/${r.json().id}/cancel`, headers: auth })
  }
})

test('two keys claiming the same new session_id at once: one gets it, the other 403', async t => {
  const { app, model } = await withKeys(t)
  model.on('claim', [{ text: ['a', 'b'], gapMs: 2000 }])
  const session = randomUUID()
  const [a, b] = await Promise.all([KEYS.alice, KEYS.bob].map(async key =>
    await app.inject({ method: 'POST', url: '/api/runs', headers: { 'x-api-key': key }, payload: { prompt: 'claim', session_id: session } })))
  t.same([a!.statusCode, b!.statusCode].sort(), [202, 403])
  t.equal([a!, b!].find(r => r.statusCode === 403)!.json().code, 'session_forbidden')
  for (const [r, key] of [[a!, KEYS.alice], [b!, KEYS.bob]] as const) {
    if (r.statusCode === 202) await app.inject({ method: 'POST', url: `/api/runs/${r.json().id}/cancel`, headers: { 'x-api-key': key } })
  }
})

test('a queued run whose directory is swapped for a link outside the roots fails at start, and nothing runs there', async t => {
  const { app, box, model } = await build(t, { env: { MAX_CONCURRENT_RUNS: '1' } })
  model.on('first holds', [{ text: ['a', 'b'], gapMs: 1500 }])
  mkdirSync(join(box.work, 'project'))
  const first = (await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'first holds' } })).json()
  const queued = (await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'write outside', working_directory: 'project' } })).json()
  t.equal(queued.status, 'queued')
  // While it waits, its directory becomes a link to a place outside the allowed roots.
  rmSync(join(box.work, 'project'), { recursive: true })
  symlinkSync(box.outside, join(box.work, 'project'))
  const result = JSON.parse((await app.inject({ url: `/api/runs/${queued.id}/events`, headers: auth })).body.split('event: result\ndata: ')[1]!.split('\n')[0]!)
  t.equal(result.status, 'failed')
  t.equal(result.error_code, 'working_directory_forbidden')
  t.match(result.error, /outside the allowed roots/)
  t.notOk(model.calls.some(c => c.prompt === 'write outside'), 'the run never reached the model')
  t.same(readdirSync(box.outside), [], 'nothing was written outside')
  await app.inject({ url: `/api/runs/${first.id}/events`, headers: auth })
})
