import { test } from 'tap'
import { spawn } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { auth, build, eventually, fakeModel, sandbox, startServer, testEnv } from '../helper.js'

/** Live processes whose run marker is a warm spare's (`warm-…`), with the marker. */
function spareProcesses (): Array<{ pid: number, marker: string }> {
  const found: Array<{ pid: number, marker: string }> = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      if (readFileSync(`/proc/${name}/stat`, 'utf8').split(') ')[1]?.[0] === 'Z') continue
      const marker = readFileSync(`/proc/${name}/environ`, 'utf8').split('\0').find(e => e.startsWith('CLAUDE_API_RUN_MARKER=warm-'))
      if (marker !== undefined) found.push({ pid: Number(name), marker: marker.slice('CLAUDE_API_RUN_MARKER='.length) })
    } catch {
      // Gone meanwhile.
    }
  }
  return found
}
const sparesOf = (instanceMarker: string): Array<{ pid: number, marker: string }> => spareProcesses().filter(p => p.marker.startsWith(instanceMarker))
const instanceOf = (dataDir: string): string => `warm-${readFileSync(join(dataDir, 'instance-id'), 'utf8').trim()}-`

/** A counter of `/metrics`, by its labels. */
function metric (text: string, name: string, labels: string): number {
  const line = text.split('\n').find(l => l.startsWith(`${name}{${labels}}`))
  return line === undefined ? NaN : Number(line.split(' ').at(-1))
}

test('warm start: a spare is parked; a run that fits takes it, one that does not starts cold; spares are replaced; close leaves none', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const { app } = await build(t, { box, model, env: { WARM_SPARES: '1' } })
  const health = async () => (await app.inject({ url: '/health' })).json()
  const metrics = async () => (await app.inject({ url: '/metrics', headers: auth })).body
  t.ok(await eventually(async () => (await health()).warm.parked === 1, 30_000), 'a spare is parked after start')
  t.strictSame((await health()).warm, { parked: 1, target: 1 })
  const mine = instanceOf(join(box.home, 'data'))
  const first = sparesOf(mine)
  t.ok(first.length >= 1, 'its CLI runs, with a warm marker')

  // A run of a new session with claimable options takes the spare.
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'hello warm', model: 'claude-sonnet-4-5', append_system_prompt: 'Be brief.' } })
  const warm = res.json()
  t.equal(warm.success, true, warm.error)
  t.equal(warm.output, 'Done!')
  t.equal(metric(await metrics(), 'ccapi_warm_claims_total', 'outcome="hit"'), 1, 'the claim is counted as a hit')
  const call = model.calls.find(c => c.prompt === 'hello warm')!
  t.equal(call.model, 'claude-sonnet-4-5', 'the claim set the model')
  t.match(JSON.stringify(call.body.system), 'Be brief.', 'and the appended system prompt')
  const session = (await app.inject({ url: `/api/sessions/${warm.session_id as string}`, headers: auth })).json()
  t.match(session, { session_id: warm.session_id, run_count: 1, title: 'hello warm' }, 'the session is the spare\'s, recorded like any other')
  const transcript = (await app.inject({ url: `/api/sessions/${warm.session_id as string}/messages`, headers: auth })).json()
  t.ok(JSON.stringify(transcript.messages).includes('hello warm'), 'its transcript is where the API looks')
  t.notOk(first.some(p => spareProcesses().some(q => q.pid === p.pid)), 'the claimed spare\'s processes ended with its run')

  // A follow-up on the same session resumes it (cold: a spare serves new sessions only).
  const again = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'and again', session_id: warm.session_id } })).json()
  t.equal(again.success, true, again.error)
  t.ok(model.calls.at(-1)!.userTexts.includes('hello warm'), 'the warm session resumes with its history')

  // Replaced after use.
  t.ok(await eventually(async () => (await health()).warm.parked === 1, 30_000), 'a new spare is parked')
  const second = sparesOf(mine)
  t.ok(second.length >= 1 && second.every(p => !first.some(q => q.marker === p.marker)), 'a different process')

  // A run whose options a spare cannot take starts cold, and succeeds.
  const cold = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'with env', env_vars: { GREETING: 'hi' } } })).json()
  t.equal(cold.success, true, cold.error)
  const text = await metrics()
  t.equal(metric(text, 'ccapi_warm_claims_total', 'outcome="miss"'), 1, 'counted as a miss')
  t.equal(metric(text, 'ccapi_warm_claims_total', 'outcome="hit"'), 1)
  t.match(text, /ccapi_warm_spares_parked 1/)
  t.strictSame(sparesOf(mine).map(p => p.marker).sort(), second.map(p => p.marker).sort(), 'the spare was left parked')

  // A parked spare that dies is replaced.
  for (const p of second) process.kill(p.pid, 'SIGKILL')
  t.ok(await eventually(() => {
    const now = sparesOf(mine)
    return now.length >= 1 && now.every(p => !second.some(q => q.marker === p.marker))
  }, 30_000), 'a spare killed while parked is replaced')
  t.ok(await eventually(async () => (await health()).warm.parked === 1, 30_000))

  await app.close()
  t.strictSame(sparesOf(mine), [], 'closing the server ends every spare')
})

test('warm start for an option set runs send: once sent twice, the next run with the same system prompt and tools takes a spare started with them', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  // Room for the plain spare and one option set.
  const { app } = await build(t, { box, model, env: { WARM_SPARES: '1', WARM_MEMORY_MAX: '512M' } })
  const health = async () => (await app.inject({ url: '/health' })).json()
  const metrics = async () => (await app.inject({ url: '/metrics', headers: auth })).body
  t.ok(await eventually(async () => (await health()).warm.parked === 1, 30_000), 'the plain spare is parked')
  const options = { system_prompt: 'You are the release bot.', allowed_tools: ['Read'] }
  for (const prompt of ['set zero', 'set one']) {
    const cold = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt, ...options } })).json()
    t.equal(cold.success, true, cold.error)
  }
  t.equal(metric(await metrics(), 'ccapi_warm_claims_total', 'outcome="miss"'), 2, 'the first two runs of the set start cold (a set sent once gets no spare)')
  t.ok(await eventually(async () => (await health()).warm.parked === 2, 30_000), 'then a spare for the set parks next to the plain one')
  const second = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'set two', ...options } })).json()
  t.equal(second.success, true, second.error)
  t.equal(metric(await metrics(), 'ccapi_warm_claims_total', 'outcome="hit"'), 1, 'the next run of the set is a hit')
  const call = model.calls.find(c => c.prompt === 'set two')!
  t.match(JSON.stringify(call.body.system), 'You are the release bot.', 'the spare has the run\'s system prompt')
  t.notMatch(JSON.stringify(call.body.system), 'You are Claude Code', 'in place of the preset, as on a cold start')
  const plain = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'plain one' } })).json()
  t.equal(plain.success, true, plain.error)
  t.equal(metric(await metrics(), 'ccapi_warm_claims_total', 'outcome="hit"'), 2, 'the plain spare still serves plain runs')
  t.notMatch(JSON.stringify(model.calls.find(c => c.prompt === 'plain one')!.body.system), 'release bot', 'with no trace of the set')
})

test('warm start: SIGTERM leaves no spare behind; nor does kill -9 once the server is back', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const env = { ...testEnv(box, model), WARM_SPARES: '2' }
  const one = await startServer(t, env)
  const parked = async (base: string): Promise<number> => (await (await fetch(`${base}/health`)).json()).warm.parked
  t.ok(await eventually(async () => await parked(one.base) === 2, 60_000), 'two spares parked')
  const mine = instanceOf(join(box.home, 'data'))
  t.ok(sparesOf(mine).length >= 2)
  one.child.kill('SIGTERM')
  t.equal(await one.exited, 0)
  t.strictSame(sparesOf(mine), [], 'SIGTERM: every spare ended')

  const two = await startServer(t, env)
  t.ok(await eventually(async () => await parked(two.base) === 2, 60_000))
  const orphans = sparesOf(mine)
  two.child.kill('SIGKILL')
  await two.exited
  t.ok(orphans.length >= 2, 'setup: the killed server had parked spares')

  // What a spare that ignored its closed input (or a process it started) would look like.
  const straggler = spawn('sh', ['-c', 'sleep 600'], { detached: true, stdio: 'ignore', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', CLAUDE_API_RUN_MARKER: `${mine}deadboot-0000` } })
  straggler.unref()
  t.teardown(() => { try { process.kill(-straggler.pid!, 'SIGKILL') } catch {} })
  const strays = (): number => spareProcesses().filter(p => p.pid === straggler.pid).length
  t.ok(await eventually(() => strays() === 1), 'setup: a marked leftover runs')
  const other = spawn('sh', ['-c', 'sleep 600'], { detached: true, stdio: 'ignore', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', CLAUDE_API_RUN_MARKER: 'warm-another-instance-boot-0000' } })
  t.teardown(() => { try { process.kill(-other.pid!, 'SIGKILL') } catch {} })
  const three = await startServer(t, env)
  t.ok(await eventually(() => strays() === 0, 30_000), 'the next start ends what carries this instance\'s spare marker')
  t.ok(await eventually(() => orphans.every(p => !spareProcesses().some(q => q.pid === p.pid)), 30_000), 'no spare of the killed server is left (they see their input close; the next start sweeps any that did not)')
  t.ok(await eventually(async () => await parked(three.base) === 2, 60_000), 'and parks its own')
  const res = await fetch(`${three.base}/api/execute`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'after the crash' }) })
  t.equal((await res.json()).success, true, 'a run takes one of them')
  t.ok(spareProcesses().some(p => p.marker.startsWith('warm-another-instance-')), 'another instance\'s spares are not touched')
  three.child.kill('SIGTERM')
  await three.exited
  t.strictSame(sparesOf(mine), [], 'and none is left at the end')
})

test('warm start: a spare taken by a run that is cancelled in the queue is not handed to another run', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const { app } = await build(t, { box, model, env: { WARM_SPARES: '1', MAX_CONCURRENT_RUNS: '1' } })
  const health = async () => (await app.inject({ url: '/health' })).json()
  t.ok(await eventually(async () => (await health()).warm.parked === 1, 30_000))
  // The one slot is taken by a run that waits on the model (it takes the spare).
  model.on('hold the slot', [{ stall: true }])
  const holder = (await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'hold the slot' } })).json()
  await model.nextCall('hold the slot')
  t.ok(await eventually(async () => (await health()).warm.parked === 1, 30_000), 'a new spare parks')
  // This one takes the new spare and waits in the queue; then it is cancelled.
  const queued = (await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'never runs' } })).json()
  t.equal(queued.status, 'queued')
  await app.inject({ method: 'POST', url: `/api/runs/${queued.id as string}/cancel`, headers: auth })
  await app.inject({ method: 'POST', url: `/api/runs/${holder.id as string}/cancel`, headers: auth })
  // The next new session must not get the cancelled run's session id.
  t.ok(await eventually(async () => (await health()).warm.parked === 1, 30_000), 'a fresh spare replaces the one the cancelled run held')
  const next = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'a new session' } })).json()
  t.equal(next.success, true, next.error)
  t.not(next.session_id, queued.session_id, 'a session id a run was given is never given to another')
})
