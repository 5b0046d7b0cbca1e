import { readdirSync, readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { markerOf, uidsOf } from './proc.js'

/**
 * Finding and ending every process of one run.
 *
 * Killing the CLI, even its whole process group, is not enough: the Bash tool starts commands in a
 * session of their own, which outlive the CLI re-parented to PID 1. Every run's environment carries
 * a unique marker, so its processes are found in `/proc/<pid>/environ` whatever their parent or
 * session (the way build servers find a build's leftovers). Descendants found through `/proc/<pid>/stat`
 * are added for processes that cleared their environment while their parent still lived.
 */

const hasProc = process.platform === 'linux'

function readEnviron (pid: number): Buffer | null {
  try {
    return readFileSync(`/proc/${pid}/environ`)
  } catch {
    return null
  }
}

function parentOf (pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
    // The command name is in parentheses and may itself contain spaces or parentheses.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // fields[0] is the state; a zombie has nothing left to kill.
    if (fields[0] === 'Z') return null
    return Number(fields[1])
  } catch {
    return null
  }
}

function allPids (): number[] {
  if (!hasProc) return []
  const pids: number[] = []
  for (const name of readdirSync('/proc')) {
    const pid = Number(name)
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid) pids.push(pid)
  }
  return pids
}

/**
 * The live processes of a run: those whose environment carries `name=value`, plus the
 * descendants of `rootPid` (while it lives). Zombies are left out: they are already dead.
 */
export function findRunProcesses (name: string, value: string, rootPid?: number): number[] {
  const needle = Buffer.from(`${name}=${value}\0`)
  const found = new Set<number>()
  const parents = new Map<number, number>()
  for (const pid of allPids()) {
    const ppid = parentOf(pid)
    if (ppid === null) continue
    parents.set(pid, ppid)
    const env = readEnviron(pid)
    if (env !== null && (env.indexOf(needle) === 0 || env.indexOf(Buffer.concat([Buffer.from([0]), needle])) !== -1)) {
      found.add(pid)
    }
  }
  if (rootPid !== undefined && parents.has(rootPid)) {
    found.add(rootPid)
    let grew = true
    while (grew) {
      grew = false
      for (const [pid, ppid] of parents) {
        if (!found.has(pid) && found.has(ppid)) {
          found.add(pid)
          grew = true
        }
      }
    }
  }
  return [...found]
}

/**
 * Live processes whose environment has `name` set to a value `match` accepts (the leftovers of a
 * family of markers, e.g. the warm spares of a server that died).
 */
export function findMarkedProcesses (name: string, match: (value: string) => boolean): number[] {
  const prefix = `${name}=`
  const found: number[] = []
  for (const pid of allPids()) {
    const env = readEnviron(pid)
    if (env === null || parentOf(pid) === null) continue
    for (const entry of env.toString('utf8').split('\0')) {
      if (entry.startsWith(prefix) && match(entry.slice(prefix.length))) {
        found.push(pid)
        break
      }
    }
  }
  return found
}

/** SIGKILL `pids`, again until none of them is left (at most a second). */
export async function killAll (find: () => number[]): Promise<number> {
  let killed = 0
  for (let round = 0; round < 20; round++) {
    const pids = find()
    if (pids.length === 0) break
    killed += pids.length
    signal(pids, 'SIGKILL')
    await sleep(50)
  }
  return killed
}

function signal (pids: Iterable<number>, sig: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, sig)
    } catch {
      // Already gone: that is what we want.
    }
  }
}

export interface KillReport {
  /** Processes signalled over the whole operation. */
  killed: number
  /** Processes still alive at the end (should be 0; logged loudly otherwise). */
  survivors: number[]
  /** Set when the last sweep could not read /proc (its survivors are then unknown). */
  error?: string
}

/**
 * End a run's whole process tree: SIGTERM to the CLI's process group and every marked process,
 * wait up to `graceMs` for the CLI to exit, then SIGKILL whatever carries the marker, sweeping
 * again until nothing is left (new processes may be forked while we kill) and verifying.
 */
export async function killRunTree (opts: {
  rootPid: number | undefined
  markerName: string
  markerValue: string
  graceMs: number
  /** Resolves when the root process has exited (and been reaped). */
  rootExited: Promise<unknown>
}): Promise<KillReport> {
  const { markerName, markerValue } = opts
  let exited = false
  void opts.rootExited.then(() => { exited = true })
  // Once reaped, the root's pid (and group id) may be reused by a stranger: stop using them.
  const root = (): number | undefined => exited ? undefined : opts.rootPid
  const seen = new Set<number>()
  let unreadable: Error | undefined
  /** The run's processes; null when /proc cannot be read just now (EMFILE: out of descriptors). */
  const sweep = (): number[] | null => {
    let pids: number[]
    try {
      pids = findRunProcesses(markerName, markerValue, root())
    } catch (err) {
      unreadable = err as Error
      return null
    }
    unreadable = undefined
    for (const p of pids) seen.add(p)
    return pids
  }

  const rootPid = root()
  if (rootPid !== undefined) {
    try {
      process.kill(-rootPid, 'SIGTERM')
    } catch {
      signal([rootPid], 'SIGTERM')
    }
  }
  signal(sweep() ?? [], 'SIGTERM')

  if (opts.graceMs > 0) {
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      opts.rootExited,
      new Promise(resolve => { timer = setTimeout(resolve, opts.graceMs) })
    ])
    clearTimeout(timer)
  }

  let survivors: number[] = []
  for (let round = 0; round < 50; round++) {
    const pid = root()
    if (pid !== undefined) {
      try {
        process.kill(-pid, 'SIGKILL')
      } catch {
        // The group is gone.
      }
    }
    const found = sweep()
    if (found === null) {
      // Try again shortly: descriptors free up as connections close.
      await sleep(100)
      continue
    }
    survivors = found
    if (survivors.length === 0) break
    signal(survivors, 'SIGKILL')
    await sleep(round < 10 ? 10 : 50)
  }
  return { killed: seen.size, survivors, ...(unreadable !== undefined ? { error: `could not read /proc: ${unreadable.message}` } : {}) }
}

/**
 * The processes the server launched and that still live (the CLIs of runs and spares, and the
 * short commands it runs as an identity): what an identity's processes may descend from.
 */
const launches = new Set<number>()
/**
 * The markers of the runs live now, with their identity's uid: at `uid` (no PID namespace) what a
 * run backgrounds is re-parented to init, and is the run's while it lives. A spare's is not here:
 * a parked CLI has run nothing, and a stray must not live on by borrowing its marker.
 */
const liveRuns = new Map<string, number>()

/** Note a process the server launched as (or for) an agent identity, until it exits. */
export function trackLaunch (pid: number | undefined): void {
  if (pid !== undefined) launches.add(pid)
}

export function untrackLaunch (pid: number | undefined): void {
  if (pid !== undefined) launches.delete(pid)
}

/** A run of identity `uid` is live under `marker` (until `endRun`). */
export function startRun (marker: string, uid: number): void {
  liveRuns.set(marker, uid)
}

export function endRun (marker: string): void {
  liveRuns.delete(marker)
}

/**
 * The processes of `uids` that belong to nothing live: not descended from a CLI the server started
 * (or a command it runs as the identity), and not carrying the marker of a live run of their own
 * identity. What a run left behind by detaching (`setsid`, double forks) and clearing its
 * environment (`env -i`), or what outlived its run by taking another one's marker.
 */
export function strayProcesses (uids: number | ReadonlySet<number>, markerName: string): number[] {
  const of = typeof uids === 'number' ? new Set([uids]) : uids
  const parents = new Map<number, number>()
  const owned: Array<{ pid: number, uids: number[] }> = []
  for (const pid of allPids()) {
    const ppid = parentOf(pid)
    if (ppid === null) continue
    parents.set(pid, ppid)
    const ids = uidsOf(pid)
    if (ids?.some(u => of.has(u)) === true) owned.push({ pid, uids: ids })
  }
  return owned.filter(({ pid, uids: ids }) => {
    for (let p: number | undefined = pid, hops = 0; p !== undefined && p > 1 && hops < 4096; p = parents.get(p), hops++) {
      if (launches.has(p)) return false
    }
    // A live run's marker keeps a process only for that run's own identity.
    const marker = markerOf(pid, markerName)
    const runUid = marker === undefined ? undefined : liveRuns.get(marker)
    return runUid === undefined || !ids.includes(runUid)
  }).map(({ pid }) => pid)
}

/** SIGKILL every stray process of `uids` (see `strayProcesses`), until none is left: how many. */
export async function endStrays (uids: number | ReadonlySet<number>, markerName: string): Promise<number> {
  if (!hasProc || (typeof uids !== 'number' && uids.size === 0)) return 0
  return await killAll(() => strayProcesses(uids, markerName))
}
