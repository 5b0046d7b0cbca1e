import { test } from 'tap'
import { auth, build, eventually, listen, pidsInDir, pidsMatching } from '../helper.js'

test('a timeout kills the run\'s whole tree, the Bash tool\'s sleep included', async t => {
  const { app, box, model } = await build(t)
  model.on('sleep a long time', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3601"' } }, { text: 'woke up' }])
  const started = Date.now()
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'sleep a long time', timeout: 5, allowed_tools: ['Bash(sh *)'] } })
  const elapsed = Date.now() - started
  const body = res.json()
  t.equal(body.status, 'timed_out')
  t.equal(body.error_code, 'timeout')
  t.equal(body.error, 'Execution timed out after 5 seconds')
  t.ok(elapsed >= 5000 && elapsed < 12_000, `ended at the limit (${elapsed} ms)`)
  // The answer comes only once the tree is gone: nothing to wait for.
  t.same(pidsMatching('sleep 3601'), [], 'the sleep is gone')
  t.same(pidsInDir(box.work), [], 'no process of the run is left in its directory')
})

test('a client disconnect from the stream kills the run and its Bash child', async t => {
  const { app, box, model } = await build(t)
  const base = await listen(app)
  model.on('sleep while streaming', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3602"' } }, { text: 'woke up' }])
  const abort = new AbortController()
  const res = await fetch(`${base}/api/execute/stream`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'sleep while streaming', allowed_tools: ['Bash(sh *)'] }),
    signal: abort.signal
  })
  t.equal(res.status, 200)
  t.ok(await eventually(() => pidsMatching('sleep 3602').length > 0, 15_000), 'the Bash tool is running the sleep')
  abort.abort()
  t.ok(await eventually(() => pidsMatching('sleep 3602').length === 0, 10_000), 'the sleep is gone after the disconnect')
  t.ok(await eventually(() => pidsInDir(box.work).length === 0, 10_000), 'no process of the run is left')
  t.ok(await eventually(async () => (await app.inject({ url: '/health' })).json().runs.active === 0), 'the slot is free again')
})

test('closing the server ends running runs and their trees', async t => {
  const { app, box, model } = await build(t)
  model.on('sleep until shutdown', [{ tool: 'Bash', input: { command: 'sh -c "sleep 3603"' } }, { text: 'woke up' }])
  const pending = app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'sleep until shutdown', allowed_tools: ['Bash(sh *)'] } })
  t.ok(await eventually(() => pidsMatching('sleep 3603').length > 0, 15_000), 'the sleep runs')
  await app.close()
  const body = (await pending).json()
  t.equal(body.status, 'cancelled')
  t.match(body.error, /shutting down/)
  t.same(pidsMatching('sleep 3603'), [], 'the sleep is gone once close() returns')
  t.same(pidsInDir(box.work), [], 'nothing of the run is left')
})
