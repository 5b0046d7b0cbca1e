import { test } from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { sha256Hex } from '../../src/auth/keys.js'
import { auth, build, fakeModel, listen, sandbox, type Sandbox } from '../helper.js'

/** The plain keys clients present; the key file holds only their hashes. */
const KEYS = {
  alice: 'cca_alice-0123456789abcdefghijklmnopqrstuv',
  bob: 'cca_bob-0123456789abcdefghijklmnopqrstuvwxy',
  carol: 'cca_carol-0123456789abcdefghijklmnopqrstuv',
  dave: 'cca_dave-0123456789abcdefghijklmnopqrstuvwx',
  erin: 'cca_erin-0123456789abcdefghijklmnopqrstuvwx',
  root: 'cca_root-0123456789abcdefghijklmnopqrstuvwx',
  board: 'cca_board-0123456789abcdefghijklmnopqrstuv'
}
type Who = keyof typeof KEYS
const as = (who: Who) => ({ 'x-api-key': KEYS[who] })

const ENTRIES = [
  { name: 'alice', key_sha256: sha256Hex(KEYS.alice), scopes: ['runs:write', 'runs:read'] },
  { name: 'bob', key_sha256: sha256Hex(KEYS.bob), scopes: ['runs:read'] },
  { name: 'carol', key_sha256: sha256Hex(KEYS.carol), scopes: ['runs:write', 'runs:read'], max_concurrent_runs: 1 },
  { name: 'dave', key_sha256: sha256Hex(KEYS.dave), scopes: ['runs:write', 'runs:read'], rate_limit_per_min: 3 },
  { name: 'erin', key_sha256: sha256Hex(KEYS.erin), scopes: ['runs:write', 'runs:read'], daily_budget_usd: 0.0001 },
  { name: 'root', key_sha256: sha256Hex(KEYS.root), scopes: ['admin'] },
  { name: 'board', key_sha256: sha256Hex(KEYS.board), scopes: ['runs:read_all'] }
]

function jsonKeyFile (box: Sandbox, entries: unknown[] = ENTRIES): string {
  const path = join(box.home, 'api-keys.json')
  writeFileSync(path, JSON.stringify({ keys: entries }, null, 2))
  return path
}

/** The same keys as an operator would write them by hand in YAML. */
function yamlKeyFile (box: Sandbox): string {
  const path = join(box.home, 'api-keys.yaml')
  writeFileSync(path, `# API keys: only their SHA-256 is stored
keys:
  - name: alice
    key_sha256: ${sha256Hex(KEYS.alice)}
    scopes: [runs:write, runs:read]
  - name: bob
    key_sha256: ${sha256Hex(KEYS.bob)}
    scopes:
      - runs:read
  - name: carol
    key_sha256: ${sha256Hex(KEYS.carol)}
    scopes: [runs:write, runs:read]
    max_concurrent_runs: 1
  - name: dave
    key_sha256: ${sha256Hex(KEYS.dave)}
    scopes: [runs:write, runs:read]
    rate_limit_per_min: 3
  - name: erin
    key_sha256: ${sha256Hex(KEYS.erin)}
    scopes: [runs:write, runs:read]
    daily_budget_usd: 0.0001
  - name: root
    key_sha256: ${sha256Hex(KEYS.root)}
    scopes: [admin]
`)
  return path
}

test('JSON key file: scopes per route, and each key sees only its own runs and sessions', async t => {
  const box = sandbox(t)
  const { app, model } = await build(t, { box, env: { API_KEYS_FILE: jsonKeyFile(box) } })
  const req = (who: Who | 'default', method: 'GET' | 'POST', url: string, payload?: object) =>
    app.inject({ method, url, headers: who === 'default' ? auth : as(who), ...(payload !== undefined ? { payload } : {}) })

  // Scopes: bob may read, not run.
  const denied = await req('bob', 'POST', '/api/execute', { prompt: 'bob wants to run' })
  t.equal(denied.statusCode, 403)
  t.match(denied.headers['content-type'], /^application\/problem\+json/)
  t.equal(denied.json().code, 'insufficient_scope')
  t.match(denied.json().detail, /runs:write/, 'names the missing scope')
  t.match(denied.json().detail, /bob/, 'names the key')
  t.equal((await req('bob', 'POST', '/api/runs', { prompt: 'bob again' })).json().code, 'insufficient_scope', 'POST /api/runs needs runs:write too')
  t.notOk(model.calls.some(c => c.prompt.startsWith('bob')), 'nothing of bob ran')
  const bobList = await req('bob', 'GET', '/api/runs')
  t.equal(bobList.statusCode, 200, 'bob may read')
  t.same(bobList.json().runs, [], 'and has no runs of his own')

  // alice runs; carol (another non-admin key) cannot see or touch the run.
  const a = await req('alice', 'POST', '/api/execute', { prompt: 'alice task' })
  t.equal(a.statusCode, 200)
  const aRun = a.json()
  t.equal(aRun.success, true, aRun.error)
  const c = await req('carol', 'POST', '/api/execute', { prompt: 'carol task' })
  t.equal(c.json().success, true, c.json().error)
  const cRun = c.json()

  for (const [method, url] of [['GET', `/api/runs/${aRun.run_id}`], ['POST', `/api/runs/${aRun.run_id}/cancel`], ['GET', `/api/runs/${aRun.run_id}/events`]] as const) {
    const res = await req('carol', method, url)
    t.equal(res.statusCode, 404, `carol: ${method} ${url.replace(aRun.run_id, '{alice run}')} is 404`)
    t.equal(res.json().code, 'run_not_found')
  }
  t.equal((await req('bob', 'GET', `/api/runs/${aRun.run_id}`)).statusCode, 404, 'bob cannot read it either')
  t.equal((await req('alice', 'GET', `/api/runs/${aRun.run_id}`)).statusCode, 200, 'alice reads her run')
  t.equal((await req('alice', 'GET', `/api/runs/${cRun.run_id}`)).statusCode, 404, 'and not carol\'s')

  const ids = async (who: Who | 'default', query = '') => (await req(who, 'GET', `/api/runs${query}`)).json().runs.map((r: { id: string }) => r.id)
  t.same(await ids('carol'), [cRun.run_id], 'carol\'s list holds only her run')
  t.same(await ids('alice'), [aRun.run_id], 'alice\'s list holds only hers (GET /api/runs lists alice\'s run)')
  t.same(await ids('alice', `?session_id=${cRun.session_id}`), [], 'filtering by another key\'s session shows nothing')
  t.same((await ids('root')).sort(), [aRun.run_id, cRun.run_id].sort(), 'the admin key root sees both')
  t.same((await ids('default')).sort(), [aRun.run_id, cRun.run_id].sort(), 'CLAUDE_API_KEY is the admin "default"')
  t.equal((await req('root', 'GET', `/api/runs/${aRun.run_id}`)).json().result.output, 'Done!', 'root reads alice\'s run')

  // Sessions belong to the key that started them.
  const stolen = await req('carol', 'POST', '/api/execute', { prompt: 'carol resumes alice', session_id: aRun.session_id })
  t.equal(stolen.statusCode, 403)
  t.equal(stolen.json().code, 'session_forbidden')
  t.match(stolen.headers['content-type'], /^application\/problem\+json/)
  t.notOk(model.calls.some(c => c.prompt === 'carol resumes alice'), 'the resume never reached the model')
  t.equal((await req('carol', 'POST', '/api/runs', { prompt: 'carol resumes alice', session_id: aRun.session_id.toUpperCase() })).statusCode, 403, 'also via POST /api/runs, whatever the case of the uuid')
  const own = await req('alice', 'POST', '/api/execute', { prompt: 'alice resumes', session_id: aRun.session_id })
  t.equal(own.json().success, true, 'alice resumes her own session')
  t.equal(own.json().session_id, aRun.session_id)
  const admin = await req('root', 'POST', '/api/execute', { prompt: 'root resumes alice', session_id: aRun.session_id })
  t.equal(admin.json().success, true, 'an admin key may resume any session')
})

test('the run view shows key_name and an admin can filter the list by key', async t => {
  const box = sandbox(t)
  const { app } = await build(t, { box, env: { API_KEYS_FILE: jsonKeyFile(box) } })
  const a = (await app.inject({ method: 'POST', url: '/api/execute', headers: as('alice'), payload: { prompt: 'alice task' } })).json()
  await app.inject({ method: 'POST', url: '/api/execute', headers: as('carol'), payload: { prompt: 'carol task' } })
  const run = (await app.inject({ url: `/api/runs/${a.run_id}`, headers: as('root') })).json()
  t.equal(run.key_name, 'alice', 'GET /api/runs/{id} shows which key started the run')
  const filtered = await app.inject({ url: '/api/runs?key_name=alice', headers: as('root') })
  t.equal(filtered.statusCode, 200)
  t.same(filtered.json().runs?.map((r: { id: string }) => r.id), [a.run_id], 'root lists alice\'s runs only')
})

test('a dashboard key with runs:read_all reads every key\'s runs and changes nothing', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  model.on('slow alice', [{ text: ['a', 'b'], gapMs: 5000 }])
  const { app } = await build(t, { box, model, env: { API_KEYS_FILE: jsonKeyFile(box) } })
  const a = (await app.inject({ method: 'POST', url: '/api/execute', headers: as('alice'), payload: { prompt: 'alice task' } })).json()
  const c = (await app.inject({ method: 'POST', url: '/api/execute', headers: as('carol'), payload: { prompt: 'carol task' } })).json()
  const list = await app.inject({ url: '/api/runs', headers: as('board') })
  t.equal(list.statusCode, 200)
  t.same(list.json().runs.map((r: { id: string }) => r.id).sort(), [a.run_id, c.run_id].sort(), 'the dashboard lists every key\'s runs')
  t.same((await app.inject({ url: '/api/runs?key_name=carol', headers: as('board') })).json().runs.map((r: { id: string }) => r.id), [c.run_id], 'and filters by key')
  t.equal((await app.inject({ url: `/api/runs/${a.run_id}`, headers: as('board') })).json().result.output, 'Done!', 'reads a run')
  const events = await app.inject({ url: `/api/runs/${a.run_id}/events`, headers: as('board') })
  t.equal(events.statusCode, 200, 'and its events')
  t.match(events.body, /event: result/)

  const slow = (await app.inject({ method: 'POST', url: '/api/runs', headers: as('alice'), payload: { prompt: 'slow alice' } })).json()
  const cancel = await app.inject({ method: 'POST', url: `/api/runs/${slow.id}/cancel`, headers: as('board') })
  t.equal(cancel.statusCode, 403, 'it cannot cancel (no runs:write)')
  t.equal(cancel.json().code, 'insufficient_scope')
  const start = await app.inject({ method: 'POST', url: '/api/runs', headers: as('board'), payload: { prompt: 'board runs' } })
  t.equal(start.statusCode, 403, 'nor start a run')
  t.notOk(model.calls.some(call => call.prompt === 'board runs'))
  t.equal((await app.inject({ url: `/api/runs/${slow.id}`, headers: as('carol') })).statusCode, 404, 'runs:read alone still sees only its own')
  await app.inject({ method: 'POST', url: `/api/runs/${slow.id}/cancel`, headers: as('alice') })
})

test('YAML key file: rate limit, concurrency cap and daily budget, each per key', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const { app } = await build(t, { box, model, env: { API_KEYS_FILE: yamlKeyFile(box) } })
  const base = await listen(app)
  const call = async (who: Who, method: string, path: string, body?: object) => {
    const res = await fetch(base + path, {
      method,
      headers: { ...as(who), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {})
    })
    return { status: res.status, headers: res.headers, body: await res.json() as any }
  }

  t.test('the YAML file is read: scopes as written', async t => {
    t.equal((await call('bob', 'POST', '/api/execute', { prompt: 'x' })).body.code, 'insufficient_scope')
    t.equal((await call('bob', 'GET', '/api/runs')).status, 200)
  })

  t.test('dave is limited to 3 requests a minute; others are not', async t => {
    for (let i = 1; i <= 3; i++) t.equal((await call('dave', 'GET', '/api/runs')).status, 200, `request ${i} passes`)
    const limited = await call('dave', 'GET', '/api/runs')
    t.equal(limited.status, 429, 'the 4th within the minute is refused')
    t.equal(limited.body.code, 'rate_limited')
    t.match(limited.headers.get('content-type'), /^application\/problem\+json/)
    t.match(limited.headers.get('retry-after'), /^\d+$/, 'Retry-After in seconds')
    const retry = Number(limited.headers.get('retry-after'))
    t.ok(retry >= 1 && retry <= 60, `Retry-After within the window (${retry})`)
    t.match(limited.body.detail, /dave/)
    t.equal(limited.body.status, 429)
    t.equal((await call('dave', 'POST', '/api/execute', { prompt: 'dave runs' })).status, 429, 'every route counts against the key')
    t.notOk(model.calls.some(c => c.prompt === 'dave runs'))
    for (const who of ['alice', 'bob', 'root'] as const) {
      for (let i = 0; i < 5; i++) t.equal((await call(who, 'GET', '/api/runs')).status, 200, `${who} is not limited (${i + 1})`)
    }
  })

  t.test('carol may have one run at a time', async t => {
    model.on('hold', [{ stall: true }])
    const first = await call('carol', 'POST', '/api/runs', { prompt: 'hold on', timeout: 5 })
    t.equal(first.status, 202)
    const second = await call('carol', 'POST', '/api/runs', { prompt: 'carol second' })
    t.equal(second.status, 429)
    t.equal(second.body.code, 'key_concurrency_exceeded')
    t.match(second.body.detail, /max_concurrent_runs=1/)
    t.match(second.headers.get('content-type'), /^application\/problem\+json/)
    t.ok(Number(second.headers.get('retry-after')) >= 1, 'with Retry-After')
    t.equal((await call('carol', 'POST', '/api/execute', { prompt: 'carol third' })).body.code, 'key_concurrency_exceeded', '/api/execute counts the same runs')
    t.notOk(model.calls.some(c => /carol (second|third)/.test(c.prompt)), 'the refused runs never started')

    const alice = await call('alice', 'POST', '/api/execute', { prompt: 'alice meanwhile' })
    t.equal(alice.body.success, true, 'other keys are not held back')

    const cancelled = await call('carol', 'POST', `/api/runs/${first.body.id}/cancel`)
    t.equal(cancelled.status, 200)
    t.equal(cancelled.body.status, 'cancelled')
    const after = await call('carol', 'POST', '/api/execute', { prompt: 'carol after cancel' })
    t.equal(after.status, 200, 'once the run has ended, carol may start another')
    t.equal(after.body.success, true)
  })

  t.test('erin has a daily budget', async t => {
    const first = await call('erin', 'POST', '/api/execute', { prompt: 'erin spends' })
    t.equal(first.status, 200)
    t.equal(first.body.success, true, first.body.error)
    const cost = first.body.total_cost_usd as number
    t.ok(cost > 0, `the run cost something (${cost})`)
    const refused = await call('erin', 'POST', '/api/execute', { prompt: 'erin again' })
    t.equal(refused.status, 429)
    t.equal(refused.body.code, 'budget_exceeded')
    t.match(refused.headers.get('content-type'), /^application\/problem\+json/)
    const retry = Number(refused.headers.get('retry-after'))
    t.ok(retry > 0 && retry <= 86_400, `Retry-After until midnight UTC (${retry} s)`)
    const midnight = Math.ceil((Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate() + 1) - Date.now()) / 1000)
    t.ok(Math.abs(retry - midnight) <= 5, 'which is the next UTC midnight')
    t.match(refused.body.detail, /erin.*0\.0001/, 'the detail names the key and its budget')
    t.test('the problem carries spent_usd and daily_budget_usd', async t => {
      t.ok(Math.abs(refused.body.spent_usd - cost) < 1e-9, `spent_usd is what the run cost (${refused.body.spent_usd})`)
      t.equal(refused.body.daily_budget_usd, 0.0001)
    })
    t.equal((await call('erin', 'POST', '/api/runs', { prompt: 'erin via runs' })).body.code, 'budget_exceeded', 'POST /api/runs too')
    t.notOk(model.calls.some(c => c.prompt.startsWith('erin again') || c.prompt.startsWith('erin via')), 'the refused runs never started')
    t.equal((await call('erin', 'GET', '/api/runs')).status, 200, 'erin may still read')
    t.equal((await call('alice', 'POST', '/api/execute', { prompt: 'alice spends' })).body.success, true, 'others have their own budget')
  })
})

test('a broken key file stops the app from starting, naming the problem', async t => {
  const good = ENTRIES[0]!
  const cases: Array<[string, unknown[], RegExp]> = [
    ['a hash that is not sha256 hex', [{ ...good, key_sha256: 'not-a-hash' }], /key_sha256/],
    ['a plain key in place of the hash', [{ ...good, key_sha256: KEYS.alice }], /key_sha256/],
    ['a name used twice', [good, { ...ENTRIES[1], name: 'alice' }], /alice is used twice/],
    ['an unknown scope', [{ ...good, scopes: ['runs:write', 'runs:delete'] }], /\/keys\/0\/scopes: unknown scope runs:delete/],
    ['an unknown field', [{ ...good, max_runs: 3 }], /max_runs|additional/i],
    ['no scopes', [{ ...good, scopes: [] }], /scopes/],
    ['a zero budget', [{ ...good, daily_budget_usd: 0 }], /daily_budget_usd/]
  ]
  for (const [what, entries, message] of cases) {
    const box = sandbox(t)
    const path = jsonKeyFile(box, entries)
    await t.rejects(build(t, { box, env: { API_KEYS_FILE: path } }), message, what)
    await t.rejects(build(t, { box, env: { API_KEYS_FILE: path } }), new RegExp(path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')), `${what}: the error names the file`)
  }
  await t.test('an unknown scope is named, with the known ones', async t => {
    const box = sandbox(t)
    await t.rejects(build(t, { box, env: { API_KEYS_FILE: jsonKeyFile(box, [{ ...good, scopes: ['runs:delete'] }]) } }), /runs:delete.*runs:write, runs:read, runs:read_all, approvals:write, files:read, files:write, admin/)
  })
  const box = sandbox(t)
  const path = join(box.home, 'api-keys.yaml')
  writeFileSync(path, 'keys:\n  - name: alice\n   key_sha256: [\n')
  await t.rejects(build(t, { box, env: { API_KEYS_FILE: path } }), /API_KEYS_FILE/, 'YAML that does not parse')
  const json = join(box.home, 'broken.json')
  writeFileSync(json, '{ "keys": [ ')
  await t.rejects(build(t, { box, env: { API_KEYS_FILE: json } }), /API_KEYS_FILE .*broken\.json/, 'JSON that does not parse')
})

test('keys are compared by hash: the key works, its sha256 does not', async t => {
  const box = sandbox(t)
  const { app } = await build(t, { box, env: { API_KEYS_FILE: jsonKeyFile(box) } })
  const list = (headers: Record<string, string>) => app.inject({ url: '/api/runs', headers })
  t.equal((await list({ 'x-api-key': KEYS.alice })).statusCode, 200, 'the key as X-API-Key')
  t.equal((await list({ authorization: `Bearer ${KEYS.alice}` })).statusCode, 200, 'the key as a bearer token')
  const byHash = await list({ 'x-api-key': sha256Hex(KEYS.alice) })
  t.equal(byHash.statusCode, 401, 'the hash in the file is not a key')
  t.equal(byHash.json().code, 'unauthorized')
  t.equal((await list({ authorization: `Bearer ${sha256Hex(KEYS.alice)}` })).statusCode, 401)
  t.equal((await list({ 'x-api-key': KEYS.alice.slice(0, -1) })).statusCode, 401, 'a prefix of a key is not a key')
  t.equal((await list({ 'x-api-key': KEYS.alice + 'x' })).statusCode, 401)
  t.equal((await list({ 'x-api-key': 'alice' })).statusCode, 401, 'the key\'s name is not a key')
  t.equal((await list(auth)).statusCode, 200, 'CLAUDE_API_KEY still works alongside the file')
})

test('API_KEYS_FILE alone (no CLAUDE_API_KEY): only the named keys work, none is generated', async t => {
  const box = sandbox(t)
  const printed: string[] = []
  const { app } = await build(t, { box, env: { API_KEYS_FILE: jsonKeyFile(box), CLAUDE_API_KEY: '' }, announce: s => printed.push(s) })
  t.same(printed, [], 'no key generated')
  t.equal((await app.inject({ url: '/api/runs', headers: as('root') })).statusCode, 200)
  t.equal((await app.inject({ url: '/api/runs', headers: auth })).statusCode, 401, 'the test key is not configured here')
})
