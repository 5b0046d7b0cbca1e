import { readdirSync, readFileSync, rmdirSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { LimitEnforcement, LimitName, ResourceUsage, RunLimits } from '../domain/limits.js'

// The cgroup file systems as the runs' groups use them: where they are mounted, which group this
// process is in, reading and writing their files, and what a server killed outright left there.

/** One run's group: its limits, what it used, whether it hit one, and its end. */
export interface Box {
  /** Directories of `cgroup.procs` the launch writes its first process into, before it runs anything. */
  readonly procsFiles: string[]
  /** Set (or lower, when a spare is claimed) the limits. Throws if the kernel refuses. */
  apply: (limits: RunLimits) => void
  /** The limit the tree has run into since it started, if any. */
  hit: () => Promise<LimitName | null>
  usage: () => Promise<ResourceUsage>
  /** Kill every process in the group and wait until it is empty; resolves with how many were killed. */
  kill: () => Promise<number>
  /** Remove the group (after `kill`). */
  remove: () => Promise<void>
}

/** Where runs' groups are made: one per server process. */
export interface Boxes {
  readonly enforced: Extract<LimitEnforcement, 'cgroup1' | 'cgroup2'>
  /** Which of the limits this host's controllers can hold. */
  readonly controls: ReadonlySet<'memory' | 'pids' | 'cpu'>
  /** A new, empty group for the process `name` (a run's marker), with its limits set. */
  create: (name: string, limits: RunLimits) => Box
  /** Kill what is left in every group and remove them all (at shutdown). */
  close: () => Promise<void>
}

/** The groups of a server's live runs: each limited as it is made, all ended at close. */
export class LiveBoxes {
  private readonly boxes = new Set<Box>()

  /** Track a new group and set its limits; one whose limits the kernel refuses is removed, and the error thrown. */
  limit (box: Box, limits: RunLimits): Box {
    this.boxes.add(box)
    try {
      box.apply(limits)
    } catch (err) {
      void box.remove().catch(() => {})
      throw err
    }
    return box
  }

  /** The group is being removed. */
  forget (box: Box): void {
    this.boxes.delete(box)
  }

  /** Kill what is in every group left and remove them (at shutdown). */
  async endAll (): Promise<void> {
    for (const b of [...this.boxes]) {
      await b.kill()
      await b.remove().catch(() => {})
    }
  }
}

/** CPU time is handed out per period of this many microseconds; a limit is a share of it. */
export const PERIOD_US = 100_000

export interface Mount { root: string, point: string, fstype: string, options: string[] }

/** The cgroup mounts this process sees (from `/proc/self/mountinfo`). */
export function cgroupMounts (mountinfo: string): Mount[] {
  const out: Mount[] = []
  for (const line of mountinfo.split('\n')) {
    const [pre, post] = line.split(' - ')
    if (pre === undefined || post === undefined) continue
    const f = pre.split(' ')
    const [fstype, , superOpts] = post.split(' ')
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') continue
    const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
    out.push({ root: unescape(f[3] ?? '/'), point: unescape(f[4] ?? ''), fstype, options: (superOpts ?? '').split(',') })
  }
  return out
}

/** This process's group per hierarchy (`/proc/self/cgroup`): v1 controller names, or `''` for v2. */
export function ownGroups (procCgroup: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const line of procCgroup.split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line)
    if (m === null) continue
    if (m[1] === '') out.set('', m[2] ?? '/')
    else for (const c of (m[1] ?? '').split(',')) out.set(c, m[2] ?? '/')
  }
  return out
}

/** The directory of `path` (as /proc/self/cgroup names it) inside a mount of its hierarchy. */
export function dirIn (mount: Mount, path: string): string {
  const rel = mount.root !== '/' && (path === mount.root || path.startsWith(mount.root + '/')) ? path.slice(mount.root.length) : path
  return join(mount.point, rel)
}

export const read = (file: string): string => readFileSync(file, 'utf8')
export const tryRead = async (file: string): Promise<string | null> => await readFile(file, 'utf8').catch(() => null)
export const countOf = (text: string | null, key: string): number => Number(new RegExp(`^${key} (\\d+)$`, 'm').exec(text ?? '')?.[1] ?? 0)
export const pidsIn = (file: string): number[] => {
  try {
    return read(file).split('\n').filter(Boolean).map(Number)
  } catch {
    return []
  }
}

export function killPids (pids: number[]): number {
  let n = 0
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL')
      n++
    } catch {
      // Gone already.
    }
  }
  return n
}

/** Remove a group directory, waiting out the kernel's last release of its tasks. */
export async function removeDir (dir: string): Promise<void> {
  for (let i = 0; i < 50; i++) {
    try {
      rmdirSync(dir)
      return
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOENT') return
      if (code !== 'EBUSY') throw err
      await sleep(20)
    }
  }
  rmdirSync(dir)
}

/** Whether a server process of this name (`ccapi-<pid>`) is alive: its groups are its own. */
const ownerAlive = (name: string): boolean => {
  const pid = Number(/^ccapi-(\d+)$/.exec(name)?.[1])
  if (!Number.isInteger(pid) || pid <= 0) return true
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * Groups a server killed outright left behind (its `ccapi-<pid>` is no longer alive): what runs in
 * them is a dead server's run, ended here, and the groups removed. Best effort.
 */
export async function sweepLeftovers (parents: string[], procsOf: (dir: string) => string[]): Promise<void> {
  for (const parent of parents) {
    let names: string[]
    try {
      names = readdirSync(parent).filter(n => n.startsWith('ccapi-') && !ownerAlive(n))
    } catch {
      continue
    }
    for (const n of names) {
      const base = join(parent, n)
      let runs: string[]
      try {
        runs = readdirSync(base, { withFileTypes: true }).filter(d => d.isDirectory()).map(d => d.name)
      } catch {
        // Another server swept it meanwhile.
        continue
      }
      for (const run of runs) {
        const dir = join(base, run)
        for (let i = 0; i < 20 && procsOf(dir).some(f => pidsIn(f).length > 0); i++) {
          for (const f of procsOf(dir)) killPids(pidsIn(f))
          await sleep(20)
        }
        await removeDir(dir).catch(() => {})
      }
      await removeDir(base).catch(() => {})
    }
  }
}

/** Where the cgroup file systems are, and which group this process is in (tests give their own). */
export interface CgroupView {
  mountinfo: string
  procCgroup: string
  pid: number
}

export const ownView = (): CgroupView => ({ mountinfo: read('/proc/self/mountinfo'), procCgroup: read('/proc/self/cgroup'), pid: process.pid })
