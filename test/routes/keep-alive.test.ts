import { test } from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import { auth, build, eventually, fakeModel, noWarmSpares, sandbox } from '../helper.js'

/**
 * Session keep-alive through a real server and the real CLI: a run's CLI stays alive after the
 * run, the session's next run is handed to it (no new CLI, the history there), each run keeps its
 * own events and cost, and a kept CLI goes when it idles too long, when the next run cannot take
 * it, when its session is deleted, and at shutdown.
 */

/** The parent of a process (0 when it is gone). */
function parentOf (pid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ')[1] ?? 0)
  } catch {
    return 0
  }
}

/** Whether a process descends from this test process (the servers here run in it): not another test's. */
function ours (pid: number): boolean {
  for (let p = pid, hops = 0; p > 1 && hops < 64; p = parentOf(p), hops++) if (p === process.pid) return true
  return false
}

/** Live processes of this test's servers carrying a run marker, with the marker (the CLI and what it started). */
function markedProcesses (): Array<{ pid: number, marker: string }> {
  const found: Array<{ pid: number, marker: string }> = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      if (readFileSync(`/proc/${name}/stat`, 'utf8').split(') ')[1]?.[0] === 'Z' || !ours(Number(name))) continue
      const marker = readFileSync(`/proc/${name}/environ`, 'utf8').split('\0').find(e => e.startsWith('CLAUDE_API_RUN_MARKER='))
      if (marker !== undefined) found.push({ pid: Number(name), marker: marker.slice('CLAUDE_API_RUN_MARKER='.length) })
    } catch {
      // Gone meanwhile.
    }
  }
  return found
}

async function server (t: Parameters<typeof build>[0], keepAliveS: string) {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const built = await build(t, { box, model, env: { SESSION_KEEPALIVE_S: keepAliveS } })
  const run = async (payload: Record<string, unknown>): Promise<any> =>
    (await built.app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload })).json()
  return { ...built, model, run }
}

test('keep-alive: the session\'s next run continues on the CLI kept from its last one', { skip: noWarmSpares }, async t => {
  const { app, model, run } = await server(t, '30')
  const before = new Set(markedProcesses().map(p => p.pid))
  model.on('first turn', [{ text: 'one' }])
  const first = await run({ prompt: 'first turn' })
  t.equal(first.success, true, first.error)
  const kept = markedProcesses().filter(p => !before.has(p.pid))
  t.ok(kept.length > 0, 'the run\'s CLI is still alive after its result')

  model.on('second turn', [{ text: 'two' }])
  const started = Date.now()
  const second = await run({ prompt: 'second turn', session_id: first.session_id })
  const took = Date.now() - started
  t.equal(second.success, true, second.error)
  t.equal(second.output, 'two')
  t.equal(second.session_id, first.session_id, 'the same session')
  t.not(second.run_id, first.run_id, 'a run of its own')
  t.ok(model.calls.at(-1)!.userTexts.includes('first turn'), 'the model sees the session\'s history')
  const still = markedProcesses().filter(p => !before.has(p.pid))
  t.ok(kept.every(p => still.some(q => q.pid === p.pid)), `the very same CLI answered (no new start; ${took} ms)`)
  const metrics = (await app.inject({ url: '/metrics', headers: auth })).body
  t.match(metrics, /ccapi_warm_claims_total\{outcome="kept"\} 1/, 'counted as a kept start')
  t.equal(second.num_turns, 1, 'its own turns')
  t.equal(second.usage?.output_tokens, first.usage?.output_tokens, 'its own usage')
  t.equal(second.total_cost_usd, first.total_cost_usd, 'each run reports its own cost, not the process\'s running total')

  // Each run's events are its own: the first run's log ends with its result.
  const events = async (id: string): Promise<string[]> => (await app.inject({ url: `/api/runs/${id}/events`, headers: auth })).body.split('\n\n').filter(f => f.includes('event:'))
  const firstEvents = await events(first.run_id)
  t.match(firstEvents.at(-1), /event: result/, 'the first run\'s events end with its own result')
  t.equal(firstEvents.filter(f => f.includes('second turn')).length, 0, 'and hold nothing of the second')
  t.ok((await events(second.run_id)).some(f => f.includes('"two"')), 'the second run\'s hold its answer')

  // A run of the session that the kept CLI cannot take (another model) ends it and resumes cold.
  model.on('third turn', [{ text: 'three' }])
  const third = await run({ prompt: 'third turn', session_id: first.session_id, model: 'claude-haiku-4-5' })
  t.equal(third.success, true, third.error)
  t.ok(model.calls.at(-1)!.userTexts.includes('second turn'), 'the cold resume has the whole history')
  t.ok(await eventually(() => kept.every(p => !markedProcesses().some(q => q.pid === p.pid))), 'the kept CLI is gone')

  await app.close()
  t.ok(await eventually(() => markedProcesses().every(p => before.has(p.pid))), 'shutdown leaves no kept CLI')
})

test('keep-alive: a kept CLI that died between runs is not waited for: the session resumes in a new CLI', { skip: noWarmSpares }, async t => {
  const { run, model } = await server(t, '30')
  const before = new Set(markedProcesses().map(p => p.pid))
  model.on('before the crash', [{ text: 'alive' }])
  const first = await run({ prompt: 'before the crash' })
  t.equal(first.success, true, first.error)
  const kept = markedProcesses().filter(p => !before.has(p.pid))
  t.ok(kept.length > 0, 'kept after the run')
  for (const p of kept) process.kill(p.pid, 'SIGKILL')
  model.on('after the crash', [{ text: 'resumed' }])
  const second = await run({ prompt: 'after the crash', session_id: first.session_id })
  t.equal(second.success, true, second.error)
  t.equal(second.output, 'resumed')
  t.ok(model.calls.at(-1)!.userTexts.includes('before the crash'), 'with the session\'s history')
})

test('keep-alive: a kept CLI goes when it idles past SESSION_KEEPALIVE_S, and when its session is deleted', { skip: noWarmSpares }, async t => {
  const { app, run } = await server(t, '2')
  const before = new Set(markedProcesses().map(p => p.pid))
  const idle = await run({ prompt: 'idle session' })
  t.equal(idle.success, true, idle.error)
  t.ok(markedProcesses().some(p => !before.has(p.pid)), 'kept after the run')
  t.ok(await eventually(() => markedProcesses().every(p => before.has(p.pid)), 10_000), 'gone once it idled 2 s')

  const doomed = await run({ prompt: 'doomed session' })
  t.equal(doomed.success, true, doomed.error)
  t.ok(markedProcesses().some(p => !before.has(p.pid)), 'kept after the run')
  const del = await app.inject({ method: 'DELETE', url: `/api/sessions/${doomed.session_id as string}`, headers: auth })
  t.equal(del.statusCode, 204, del.body)
  // Killed before the answer; gone from /proc a moment later.
  t.ok(await eventually(() => markedProcesses().every(p => before.has(p.pid)), 1000), 'deleting the session ended its kept CLI first')
})

test('keep-alive off (SESSION_KEEPALIVE_S=0): a run\'s CLI ends with it', async t => {
  const { run } = await server(t, '0')
  const before = new Set(markedProcesses().map(p => p.pid))
  const r = await run({ prompt: 'no keeping' })
  t.equal(r.success, true, r.error)
  t.ok(await eventually(() => markedProcesses().every(p => before.has(p.pid))), 'nothing of it is left')
})
