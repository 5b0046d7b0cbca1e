import { test } from 'tap'
import { auth, build } from '../helper.js'

/** Requests the CLI could never be started with are refused up front (400, the field named), never accepted and then failed. */
test('what cannot reach the CLI is a 400 naming the field, and nothing runs', async t => {
  const { app, model } = await build(t)
  // Built as text: JSON.stringify itself gives up on nesting this deep.
  const deepText = '{"type":"object","properties":{"x":'.repeat(5000) + '{"type":"string"}' + '}}'.repeat(5000)
  const big = Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`VAR_${i}`, 'v'.repeat(32 * 1024)]))
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['a NUL byte in model', { model: 'claude\u0000x' }, '/model'],
    ['a NUL byte in an env value', { env_vars: { GREETING: 'hi\u0000there' } }, '/env_vars/GREETING'],
    ['a system prompt past MAX_PROMPT_CHARS', { system_prompt: 'x'.repeat(200_001) }, '/system_prompt'],
    ['an env var name of 300 characters', { env_vars: { ['N'.repeat(300)]: '1' } }, '/env_vars/'],
    ['384 KiB of env values', { env_vars: big }, '/env_vars'],
    ['an output_schema of 1 MB', { output_schema: { type: 'object', description: 'd'.repeat(1_000_000) } }, '/output_schema']
  ]
  for (const [what, extra, path] of cases) {
    const res = await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: `limits: ${what}`, ...extra } })
    t.equal(res.statusCode, 400, `${what}: 400`)
    t.equal(res.json().code, 'invalid_request', what)
    t.ok((res.json().errors as Array<{ path: string }>).some(e => e.path.startsWith(path)), `${what}: names ${path}`)
    t.notOk(res.body.includes('hi\u0000there'), `${what}: no value echoed`)
  }
  const deep = await app.inject({ method: 'POST', url: '/api/runs', headers: { ...auth, 'content-type': 'application/json' }, payload: `{"prompt":"limits: deep","output_schema":${deepText}}` })
  t.equal(deep.statusCode, 400, 'an output_schema 5000 levels deep: 400, not a 500')
  t.equal(deep.json().errors?.[0]?.path, '/output_schema')
  t.notOk(model.calls.some(c => c.prompt.startsWith('limits:')), 'none of them ran')
  const runs = (await app.inject({ url: '/api/runs', headers: auth })).json()
  t.same(runs.runs, [], 'none was recorded')
})

test('a 150,000-character system prompt reaches the model whole (it never travels as an argument)', async t => {
  const { app, model } = await build(t)
  const system = 'Rule: ' + 'be brief. '.repeat(15_000)
  const appended = 'Also: ' + 'cite sources. '.repeat(3_000)
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'long system prompt', system_prompt: system } })
  t.equal(res.json().status, 'succeeded', res.json().error ?? '')
  const sent = (call: { body: any }): string => JSON.stringify(call.body.system)
  t.ok(sent(model.calls.find(c => c.prompt === 'long system prompt')!).includes(system.slice(-2000)), 'the model got all of it')
  const res2 = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'long appended prompt', append_system_prompt: appended } })
  t.equal(res2.json().status, 'succeeded', res2.json().error ?? '')
  t.ok(sent(model.calls.find(c => c.prompt === 'long appended prompt')!).includes(appended.slice(-2000)), 'the appended part whole')
})

test('a NUL byte in a prompt is refused, on either store, as a 400 naming the field; nothing runs', async t => {
  const { app, model } = await build(t)
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'nul: before\u0000after' } })
  t.equal(res.statusCode, 400)
  t.match(res.json().detail ?? res.json().title, /prompt/, 'the field is named')
  t.equal(model.calls.length, 0, 'nothing reached the model')
})
