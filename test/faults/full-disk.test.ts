import { test } from 'tap'
import { execFileSync } from 'node:child_process'
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { auth, build, eventually, sandbox } from '../helper.js'

const FAKE = fileURLToPath(new URL('../fixtures/fake-claude.mjs', import.meta.url))
const skip = process.getuid?.() !== 0
  ? 'mounting a small tmpfs needs root (CI runs as root)'
  // On the PostgreSQL store nothing of the run store is in DATA_DIR: a full database disk is PostgreSQL's to report.
  : (process.env.TEST_DATABASE_URL ?? '') !== '' ? 'the run store is in PostgreSQL (TEST_DATABASE_URL), not in DATA_DIR' : false

test('a full DATA_DIR: the server stays up, says so, refuses new runs with 503, and catches up once there is room', { skip }, async t => {
  const box = sandbox(t)
  const disk = join(box.home, 'disk')
  mkdirSync(disk)
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', disk], { stdio: 'pipe' })
  } catch (err) {
    // Root without the right to mount (some containers): nothing to test the fault on.
    t.comment(`skipped: cannot mount a small tmpfs here: ${(err as Error).message.split('\n')[0]}`)
    return
  }
  t.teardown(() => { try { execFileSync('umount', ['-l', disk]) } catch {} })
  const { app } = await build(t, { box, env: { DATA_DIR: join(disk, 'data'), CLAUDE_CODE_PATH: FAKE } })

  const running = (await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'ticks 300 20' } })).json()
  t.ok(await eventually(async () => (await app.inject({ url: `/api/runs/${running.id}`, headers: auth })).json().status === 'running', 10_000), 'a chatty run is going')
  await new Promise(resolve => setTimeout(resolve, 800))
  // Fill the disk while it writes its events.
  const filler = join(disk, 'filler')
  try {
    writeFileSync(filler, Buffer.alloc(8 * 1024 * 1024))
  } catch {
    // ENOSPC: the disk is full, as wanted.
  }
  const refused = await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'a new run on a full disk' } })
  t.ok(await eventually(async () => (await app.inject({ url: '/health' })).json().store === 'unavailable', 10_000), '/health answers, and says the store is unavailable')
  const health = (await app.inject({ url: '/health' })).json()
  t.equal(health.status, 'degraded')
  if (refused.statusCode !== 202) {
    t.equal(refused.statusCode, 503, 'a new run is refused with 503, not a 500')
    t.equal(refused.json().code, 'store_unavailable')
  }

  rmSync(filler, { force: true })
  const done = await app.inject({ url: `/api/runs/${running.id}/events`, headers: auth })
  t.match(done.body, /event: result/, 'the chatty run ended with its result')
  let view: any
  t.ok(await eventually(async () => { view = (await app.inject({ url: `/api/runs/${running.id}`, headers: auth })).json(); return view.status === 'succeeded' }, 10_000), 'and is recorded as succeeded')
  t.equal(view.status, 'succeeded', JSON.stringify(view.result ?? view).slice(0, 400))
  t.ok(await eventually(async () => (await app.inject({ url: '/health' })).json().store === 'ok', 10_000), 'the store is back once there is room')
  const after = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'after the disk was freed' } })
  t.equal(after.json().status, 'succeeded', 'and runs start again')
})
