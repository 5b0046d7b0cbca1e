import { test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { readdirSync, readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { RUN_MARKER_VAR } from '../../src/isolation/proc.js'
import { findRunProcesses, killRunTree } from '../../src/isolation/process-tree.js'

const linux = process.platform === 'linux'
const PATH = '/usr/local/bin:/usr/bin:/bin'

/** 'gone', 'zombie' or 'alive'. */
function state (pid: number): 'gone' | 'zombie' | 'alive' {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z') ? 'zombie' : 'alive'
  } catch {
    return 'gone'
  }
}

/** Live processes running exactly `argv` whose environment contains `token` (so only ours). */
function pidsOf (argv: string[], token: string): number[] {
  const want = argv.join('\0') + '\0'
  const pids: number[] = []
  for (const name of readdirSync('/proc')) {
    const pid = Number(name)
    if (!Number.isInteger(pid) || pid <= 0) continue
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'latin1') !== want) continue
      if (!readFileSync(`/proc/${pid}/environ`, 'latin1').includes(token)) continue
    } catch {
      continue
    }
    if (state(pid) === 'alive') pids.push(pid)
  }
  return pids
}

async function waitFor<T> (fn: () => T | undefined, what: string, ms = 3000): Promise<T> {
  const until = Date.now() + ms
  while (Date.now() < until) {
    const v = fn()
    if (v !== undefined) return v
    await sleep(20)
  }
  throw new Error(`timed out waiting for ${what}`)
}

interface T { teardown: (fn: () => unknown) => void }

/**
 * Start a process and make sure it, and any `sleep <n>` it leaves behind carrying `token`, is
 * killed at the end of the test whatever happens.
 */
function start (t: T, cmd: string, args: string[], env: Record<string, string>, token: string, sleeps: string[]): ChildProcess {
  const child = spawn(cmd, args, { env: { PATH, ...env }, detached: true, stdio: 'ignore' })
  child.on('error', () => {})
  t.teardown(() => {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try { process.kill(child.pid, 'SIGKILL') } catch {}
    }
    for (const n of sleeps) {
      for (const pid of pidsOf(['sleep', n], token)) {
        try { process.kill(pid, 'SIGKILL') } catch {}
      }
    }
  })
  return child
}

test('killRunTree ends every marked process, even one in its own session, and spares strangers', { skip: !linux && 'needs /proc' }, async t => {
  const value = randomUUID()
  const marker = { [RUN_MARKER_VAR]: value }
  const root = start(t, 'sleep', ['4011'], marker, value, ['4011'])
  const rootExited = once(root, 'exit')
  // detached makes `setsid` a group leader, so it forks: the sleep is re-parented, in its own
  // session, outside the root's process group and tree, like a Bash tool command.
  start(t, 'setsid', ['sleep', '4012'], marker, value, ['4012'])
  // A stranger whose marker value merely starts with ours.
  const stranger = start(t, 'sleep', ['4013'], { [RUN_MARKER_VAR]: `${value}x` }, value, ['4013'])

  const rootPid = root.pid!
  const strangerPid = stranger.pid!
  const orphanPid = await waitFor(() => pidsOf(['sleep', '4012'], value)[0], 'the setsid sleep')
  await waitFor(() => pidsOf(['sleep', '4011'], value)[0], 'the root sleep')
  await waitFor(() => pidsOf(['sleep', '4013'], value)[0], 'the stranger sleep')
  t.not(readFileSync(`/proc/${orphanPid}/stat`, 'latin1').split(' ')[3], String(rootPid), 'the orphan is not a child of the root')

  const found = findRunProcesses(RUN_MARKER_VAR, value)
  t.same(found.sort((a, b) => a - b), [rootPid, orphanPid].sort((a, b) => a - b), 'both marked processes are found, the stranger is not')
  t.notOk(findRunProcesses(RUN_MARKER_VAR, value.slice(0, -1)).length, 'a prefix of the value finds nothing')

  const report = await killRunTree({ rootPid, markerName: RUN_MARKER_VAR, markerValue: value, graceMs: 2000, rootExited })
  t.same(report.survivors, [], 'no survivors')
  // The root may die of the group SIGTERM before the first sweep sees it, so it is not always counted.
  t.ok(report.killed >= 1, `killed ${report.killed}`)
  for (const pid of [rootPid, orphanPid]) {
    t.not(state(pid), 'alive', `${pid} is gone (or a zombie)`)
  }
  t.same(pidsOf(['sleep', '4011'], value), [], 'no sleep 4011 left')
  t.same(pidsOf(['sleep', '4012'], value), [], 'no sleep 4012 left')
  t.equal(state(strangerPid), 'alive', 'the unmarked process is untouched')
  t.same(findRunProcesses(RUN_MARKER_VAR, value), [], 'a new sweep finds nothing')
})

test('descendants of the root are found even when they cleared their environment', { skip: !linux && 'needs /proc' }, async t => {
  const value = randomUUID()
  // `env -i` starts the sleep with an empty environment: only its ancestry ties it to the run.
  // The token in the argv of the shell is not enough for pidsOf, so find the sleep by its parent.
  const root = start(t, 'sh', ['-c', 'env -i sleep 4014 & wait'], { [RUN_MARKER_VAR]: value }, value, [])
  const rootExited = once(root, 'exit')
  const rootPid = root.pid!
  const bare = await waitFor(() => {
    for (const name of readdirSync('/proc')) {
      const pid = Number(name)
      if (!Number.isInteger(pid)) continue
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
        if (stat.includes('(sleep)') && stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1] === String(rootPid)) return pid
      } catch {}
    }
    return undefined
  }, 'the env -i sleep')
  t.teardown(() => { try { process.kill(bare, 'SIGKILL') } catch {} })
  t.equal(readFileSync(`/proc/${bare}/environ`).length, 0, 'no environment at all')

  t.notOk(findRunProcesses(RUN_MARKER_VAR, value).includes(bare), 'not found by marker alone')
  t.ok(findRunProcesses(RUN_MARKER_VAR, value, rootPid).includes(bare), 'found as a descendant of the root')

  const report = await killRunTree({ rootPid, markerName: RUN_MARKER_VAR, markerValue: value, graceMs: 2000, rootExited })
  t.same(report.survivors, [])
  t.not(state(bare), 'alive')
  t.not(state(rootPid), 'alive')
})

test('killRunTree with no root and nothing marked returns at once', { skip: !linux && 'needs /proc' }, async t => {
  const report = await killRunTree({ rootPid: undefined, markerName: RUN_MARKER_VAR, markerValue: randomUUID(), graceMs: 0, rootExited: Promise.resolve() })
  t.same(report, { killed: 0, survivors: [] })
})
