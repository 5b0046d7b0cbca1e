import { test } from 'tap'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { auth, build, fakeModel, sandbox } from '../helper.js'

test('sessions: resume sends the history, fork gets a new id, a new uuid starts a session', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const { app } = await build(t, { box, model })
  const run = async (payload: Record<string, unknown>) =>
    await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload })

  const first = (await run({ prompt: 'remember the word PAPAYA' })).json()
  t.equal(first.success, true, first.error)
  const sid = first.session_id as string

  const second = (await run({ prompt: 'which word did I say?', session_id: sid })).json()
  t.equal(second.success, true, second.error)
  t.equal(second.session_id, sid, 'same session')
  const resumed = model.calls.at(-1)!
  t.equal(resumed.prompt, 'which word did I say?')
  t.ok(resumed.userTexts.includes('remember the word PAPAYA'), 'the model got the first call\'s prompt')

  const fork = (await run({ prompt: 'fork it', session_id: sid, fork_session: true })).json()
  t.equal(fork.success, true, fork.error)
  t.not(fork.session_id, sid, 'a fork has a new session id')
  t.match(fork.session_id, /^[0-9a-f-]{36}$/)
  t.ok(model.calls.at(-1)!.userTexts.includes('remember the word PAPAYA'), 'the fork carries the history')

  const again = (await run({ prompt: 'still there?', session_id: sid })).json()
  t.equal(again.session_id, sid, 'the original session goes on after a fork')
  t.notOk(model.calls.at(-1)!.userTexts.includes('fork it'), 'the fork did not write into the original')

  const fresh = randomUUID()
  const made = (await run({ prompt: 'start with my id', session_id: fresh })).json()
  t.equal(made.success, true, made.error)
  t.equal(made.session_id, fresh, 'a uuid not seen before starts a session with that id')
  t.same(model.calls.at(-1)!.userTexts, ['start with my id'], 'with no history')
})

test('a session is pinned to its directory and found again after a restart', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  mkdirSync(join(box.work, 'a'))
  mkdirSync(join(box.work, 'b'))
  const one = await build(t, { box, model })
  const first = (await one.app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'first in a', working_directory: join(box.work, 'a') } })).json()
  t.equal(first.success, true, first.error)
  await one.app.close()

  // A new server process (same Claude config dir) finds the session from the CLI's own files.
  const two = await build(t, { box, model })
  const wrongDir = await two.app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'x', session_id: first.session_id, working_directory: join(box.work, 'b') } })
  t.equal(wrongDir.statusCode, 409)
  t.equal(wrongDir.json().code, 'session_directory_mismatch')
  t.match(wrongDir.json().detail, join(box.work, 'a'), 'the error names the session\'s directory')

  const resumed = (await two.app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'second, no dir named', session_id: first.session_id } })).json()
  t.equal(resumed.success, true, resumed.error)
  t.ok(model.calls.at(-1)!.userTexts.includes('first in a'), 'resumed in its own directory with its history')
})

test('two runs of one session never overlap: the second waits, then sees the first\'s history', async t => {
  const { app, model } = await build(t)
  const sid = randomUUID()
  model.on('take your time', [{ text: ['thinking', 'done thinking'], gapMs: 1500 }])
  const firstCall = model.nextCall('take your time')
  const first = app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'take your time', session_id: sid } })
  await firstCall
  const second = app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'and then me', session_id: sid } })
  await new Promise(resolve => setTimeout(resolve, 300))
  const health = (await app.inject({ url: '/health' })).json()
  t.same(health.runs, { active: 1, queued: 1 }, 'the second run waits in the queue while the first runs')
  t.equal(model.calls.filter(c => c.prompt === 'and then me').length, 0, 'the second has not reached the model yet')

  const [a, b] = await Promise.all([first, second])
  t.equal(a.json().status, 'succeeded')
  t.equal(b.json().status, 'succeeded', b.json().error)
  t.equal(b.json().session_id, sid)
  const secondCall = model.calls.find(c => c.prompt === 'and then me')!
  t.same(secondCall.userTexts, ['take your time', 'and then me'], 'the second resumed with the full history')
})

test('a run queued behind a stalled run of its session times out within its own limit', async t => {
  const { app, model } = await build(t)
  const sid = randomUUID()
  model.on('hang on', [{ stall: true }])
  const stalled = model.nextCall('hang on')
  const first = app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'hang on', session_id: sid, timeout: 4 } })
  await stalled
  const second = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'behind it', session_id: sid, timeout: 1 } })).json()
  t.equal(second.status, 'timed_out', 'the waiting run ends at its own limit')
  t.equal(second.error, 'Execution timed out after 1 seconds')
  const firstBody = (await first).json()
  t.equal(firstBody.status, 'timed_out', 'the stalled run is ended by its own timeout')
  t.equal(firstBody.error, 'Execution timed out after 4 seconds')
  t.notOk(model.calls.some(c => c.prompt === 'behind it'), 'the timed-out waiting run never started')
})
