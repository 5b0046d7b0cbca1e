import { test } from 'tap'
import { fileURLToPath } from 'node:url'
import { auth, build, pidsMatching } from '../helper.js'

const FAKE = fileURLToPath(new URL('../fixtures/fake-claude.mjs', import.meta.url))

test('a CLI that crashes mid-line gives cli_error with its stderr, and the server goes on', async t => {
  const { app } = await build(t, { env: { CLAUDE_CODE_PATH: FAKE } })
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'crash' } })
  const body = res.json()
  t.equal(res.statusCode, 200)
  t.equal(body.status, 'failed')
  t.equal(body.error_code, 'cli_error')
  t.equal(body.exit_code, 3)
  t.match(body.error, /exited with code 3 without a result/)
  t.match(body.error, /crashed on purpose/, 'the stderr tail explains it')
  const next = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'hello' } })).json()
  t.equal(next.output, 'fake: hello', 'the next run is unaffected')
})

test('non-JSON lines, split lines and oversized lines do not break a run', async t => {
  const { app } = await build(t, { env: { CLAUDE_CODE_PATH: FAKE, MAX_LINE_BYTES: '65536' } })
  const res = await app.inject({ method: 'POST', url: '/api/execute/stream', headers: auth, payload: { prompt: 'noise 200000' } })
  const events = res.body.split('\n\n').filter(f => f.includes('event:')).map(f => ({
    event: /event: (\S+)/.exec(f)?.[1],
    data: /data: (.*)/.exec(f)?.[1] ?? ''
  }))
  const texts = events.filter(e => e.event === 'text').map(e => JSON.parse(e.data).text)
  t.same(texts, ['héllo wörld ✓'], 'a line split inside a multi-byte character arrives whole')
  const shrunk = events.filter(e => e.data.includes('"junk"')).map(e => JSON.parse(e.data))
  t.equal(shrunk.length, 1, 'the oversized line arrives, shrunk to valid JSON')
  t.equal(shrunk[0].junk.length, 64 * 1024, 'forwarded with its long string cut to 64 KiB')
  t.notOk(events.some(e => e.data === 'this is not json'), 'non-JSON lines are not forwarded as messages')
  const result = JSON.parse(events.at(-1)!.data)
  t.equal(result.output, 'survived the noise')
  t.equal(result.success, true)
})

test('output over MAX_OUTPUT_BYTES is capped with truncated: true', async t => {
  const { app } = await build(t, { env: { CLAUDE_CODE_PATH: FAKE, MAX_OUTPUT_BYTES: '100000' } })
  const body = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'flood 1' } })).json()
  t.equal(body.success, true)
  t.equal(body.truncated, true)
  t.equal(Buffer.byteLength(body.output), 100000)
})

test('a result line over MAX_LINE_BYTES is shrunk, not lost: the run succeeds with truncated output', async t => {
  const { app } = await build(t, { env: { CLAUDE_CODE_PATH: FAKE, MAX_LINE_BYTES: '65536', MAX_OUTPUT_BYTES: '20000' } })
  const body = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'flood 1' } })).json()
  t.equal(body.success, true, body.error)
  t.equal(body.truncated, true)
  t.equal(Buffer.byteLength(body.output), 20000)
  t.equal(body.num_turns, 1, 'the fields after the giant string survive')
  t.equal(body.total_cost_usd, 0)
})

test('a CLI that ignores SIGTERM is killed after the grace period', async t => {
  const { app } = await build(t, { env: { CLAUDE_CODE_PATH: FAKE, KILL_GRACE_MS: '300' } })
  const started = Date.now()
  const body = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'stubborn', timeout: 1 } })).json()
  t.equal(body.status, 'timed_out')
  t.ok(Date.now() - started < 5000, 'ended soon after the limit')
  t.same(pidsMatching('fake-claude.mjs'), [], 'the stubborn process is gone')
})
