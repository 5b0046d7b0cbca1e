import { test } from 'tap'
import { auth, build } from '../helper.js'

test('at most MAX_CONCURRENT_RUNS run, MAX_QUEUED_RUNS wait, the rest get 429 with Retry-After', async t => {
  const { app, model } = await build(t, { env: { MAX_CONCURRENT_RUNS: '2', MAX_QUEUED_RUNS: '1' } })
  model.on('hold', [{ text: ['holding', 'released'], gapMs: 1500 }])
  const exec = (prompt: string) => app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt } })
  const running = [exec('hold 1'), exec('hold 2')]
  const queued = exec('quick after the queue')
  await new Promise(resolve => setTimeout(resolve, 200))
  const health = (await app.inject({ url: '/health' })).json()
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
