import { test } from 'tap'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { RUN_MARKER_VAR } from '../../src/isolation/proc.js'
import { endRun, endStrays, startRun, strayProcesses, trackLaunch, untrackLaunch } from '../../src/isolation/process-tree.js'

/**
 * The sweep of an identity's processes (agent isolation at `uid`): what no live launch or live
 * run of the same identity accounts for goes. Real processes under real uids, as root.
 */
const skip = process.getuid?.() !== 0 ? 'needs root to start processes as other uids' : process.platform !== 'linux' ? 'needs /proc' : false
const UID = 39_000 + (process.pid % 500)
const OTHER = UID + 500

/** A `sleep` as `uid` in a session of its own, re-parented away from this process (as an escapee is). */
async function escapee (uid: number, marker?: string): Promise<number> {
  const sh = spawn('/bin/sh', ['-c', 'setsid sleep 3641 < /dev/null > /dev/null 2>&1 & echo $!'], {
    uid,
    gid: uid,
    cwd: '/',
    env: { PATH: '/usr/bin:/bin', ...(marker !== undefined ? { [RUN_MARKER_VAR]: marker } : {}) }
  })
  let out = ''
  sh.stdout.on('data', (c: Buffer) => { out += c.toString() })
  await new Promise(resolve => sh.once('exit', resolve))
  return Number(out.trim())
}

/** Alive, not a zombie waiting for its new parent to reap it. */
const alive = (pid: number): boolean => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')
  } catch {
    return false
  }
}

test('an identity\'s strays: kept while a launch they descend from or a live run of their identity holds them, ended after', { skip }, async t => {
  const plain = await escapee(UID)
  const borrowed = await escapee(UID, 'marker-of-a-live-run')
  const foreign = await escapee(OTHER, 'marker-of-a-live-run')
  t.teardown(() => { for (const p of [plain, borrowed, foreign]) try { process.kill(p, 'SIGKILL') } catch {} })

  startRun('marker-of-a-live-run', UID)
  const stray = strayProcesses(new Set([UID, OTHER]), RUN_MARKER_VAR)
  t.ok(stray.includes(plain), 'detached, no marker: a stray')
  t.notOk(stray.includes(borrowed), 'carrying a live run\'s marker of its own identity: the run\'s')
  t.ok(stray.includes(foreign), 'carrying the marker of another identity\'s run: a stray all the same')

  // A process the server launched (and whatever descends from it) is never a stray.
  const launched = spawn('sleep', ['3642'], { uid: UID, gid: UID, cwd: '/', env: { PATH: '/usr/bin:/bin' } })
  trackLaunch(launched.pid)
  t.teardown(() => launched.kill('SIGKILL'))
  t.notOk(strayProcesses(UID, RUN_MARKER_VAR).includes(launched.pid!), 'a live launch is not a stray')

  const ended = await endStrays(new Set([UID, OTHER]), RUN_MARKER_VAR)
  t.ok(ended >= 2, `the strays were killed (${ended})`)
  await sleep(50)
  t.notOk(alive(plain), 'the plain escapee is gone')
  t.notOk(alive(foreign), 'the marker thief of another identity is gone')
  t.ok(alive(borrowed), 'the live run\'s is left')
  t.ok(alive(launched.pid!), 'the launch is left')

  endRun('marker-of-a-live-run')
  untrackLaunch(launched.pid)
  await endStrays(UID, RUN_MARKER_VAR)
  await sleep(50)
  t.notOk(alive(borrowed), 'once the run has ended, its marker keeps nothing')
  t.notOk(alive(launched.pid!), 'nor does a launch that is no longer tracked')
})
