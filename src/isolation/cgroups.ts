import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { LimitEnforcement, LimitName, ResourceUsage, RunLimits } from '../domain/limits.js'

/**
 * Runs held to their limits by the kernel: each run's whole tree (the CLI, its tools, whatever
 * they start) lives in a control group of its own, made when it launches and removed when it
 * ends. cgroup v2 where the server's group is delegated to it, else the v1 controllers the host
 * mounts; `boxesFor` finds which, once at start. The same group is the run's containment: killing
 * it kills everything in it, whatever session or parent a process gave itself.
 */

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

const PERIOD_US = 100_000

interface Mount { root: string, point: string, fstype: string, options: string[] }

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
function dirIn (mount: Mount, path: string): string {
  const rel = mount.root !== '/' && (path === mount.root || path.startsWith(mount.root + '/')) ? path.slice(mount.root.length) : path
  return join(mount.point, rel)
}

const read = (file: string): string => readFileSync(file, 'utf8')
const tryRead = async (file: string): Promise<string | null> => await readFile(file, 'utf8').catch(() => null)
const countOf = (text: string | null, key: string): number => Number(new RegExp(`^${key} (\\d+)$`, 'm').exec(text ?? '')?.[1] ?? 0)
const pidsIn = (file: string): number[] => {
  try {
    return read(file).split('\n').filter(Boolean).map(Number)
  } catch {
    return []
  }
}

function killPids (pids: number[]): number {
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
async function removeDir (dir: string): Promise<void> {
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
async function sweepLeftovers (parents: string[], procsOf: (dir: string) => string[]): Promise<void> {
  for (const parent of parents) {
    let names: string[]
    try {
      names = readdirSync(parent).filter(n => n.startsWith('ccapi-') && !ownerAlive(n))
    } catch {
      continue
    }
    for (const n of names) {
      const base = join(parent, n)
      for (const run of readdirSync(base, { withFileTypes: true }).filter(d => d.isDirectory())) {
        const dir = join(base, run.name)
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

/** cgroup v1: one directory per controller, all named alike. */
class V1Boxes implements Boxes {
  readonly enforced = 'cgroup1' as const
  readonly controls: ReadonlySet<'memory' | 'pids' | 'cpu'>
  private readonly live = new Set<Box>()

  /** `bases`: this server's directory in each controller's hierarchy. */
  constructor (private readonly bases: Map<string, string>) {
    this.controls = new Set((['memory', 'pids', 'cpu'] as const).filter(c => bases.has(c)))
  }

  create (name: string, limits: RunLimits): Box {
    const dirs = new Map<string, string>()
    for (const [c, base] of this.bases) {
      const d = join(base, name)
      if (![...dirs.values()].includes(d)) mkdirSync(d)
      dirs.set(c, d)
    }
    const unique = [...new Set(dirs.values())]
    const mem = dirs.get('memory')
    const pids = dirs.get('pids')
    const cpu = dirs.get('cpu')
    const acct = dirs.get('cpuacct')
    const freezer = dirs.get('freezer')
    const any = pids ?? mem ?? unique[0] ?? ''
    const box: Box = {
      procsFiles: unique.map(d => join(d, 'cgroup.procs')),
      apply: (l) => {
        if (mem !== undefined) {
          const v = String(l.memoryMax ?? -1)
          // With swap accounted, memory and swap together: a run does not swap its way past its limit.
          const memsw = join(mem, 'memory.memsw.limit_in_bytes')
          const hasSwap = existsSync(memsw)
          // The combined limit may never be below the memory limit: raise in one order, lower in the other.
          if (hasSwap && l.memoryMax === undefined) writeFileSync(memsw, v)
          writeFileSync(join(mem, 'memory.limit_in_bytes'), v)
          if (hasSwap && l.memoryMax !== undefined) writeFileSync(memsw, v)
        }
        if (pids !== undefined) writeFileSync(join(pids, 'pids.max'), l.pidsMax === undefined ? 'max' : String(l.pidsMax))
        if (cpu !== undefined) {
          writeFileSync(join(cpu, 'cpu.cfs_period_us'), String(PERIOD_US))
          writeFileSync(join(cpu, 'cpu.cfs_quota_us'), l.cpuMax === undefined ? '-1' : String(Math.max(1000, Math.round(l.cpuMax * PERIOD_US))))
        }
      },
      hit: async () => {
        if (mem !== undefined && countOf(await tryRead(join(mem, 'memory.oom_control')), 'oom_kill') > 0) return 'memory'
        if (pids !== undefined && countOf(await tryRead(join(pids, 'pids.events')), 'max') > 0) return 'pids'
        return null
      },
      usage: async () => {
        const peak = mem !== undefined ? Number(await tryRead(join(mem, 'memory.max_usage_in_bytes'))) : NaN
        const ns = acct !== undefined ? Number(await tryRead(join(acct, 'cpuacct.usage'))) : NaN
        return { peak_memory_bytes: Number.isFinite(peak) && peak > 0 ? peak : null, cpu_seconds: Number.isFinite(ns) ? Math.round(ns / 1e6) / 1000 : null }
      },
      kill: async () => {
        const procs = join(any, 'cgroup.procs')
        let killed = 0
        // Frozen, nothing in the group can fork while it is being killed.
        const state = freezer !== undefined ? join(freezer, 'freezer.state') : undefined
        for (let i = 0; i < 100; i++) {
          const pids = pidsIn(procs)
          if (pids.length === 0) break
          if (state !== undefined) {
            try {
              writeFileSync(state, 'FROZEN')
            } catch { /* killed anyway */ }
          }
          killed += killPids(pids)
          if (state !== undefined) {
            try {
              writeFileSync(state, 'THAWED')
            } catch { /* as above */ }
          }
          await sleep(i < 10 ? 5 : 20)
        }
        return killed
      },
      remove: async () => {
        this.live.delete(box)
        for (const d of unique) await removeDir(d)
      }
    }
    this.live.add(box)
    try {
      box.apply(limits)
    } catch (err) {
      void box.remove().catch(() => {})
      throw err
    }
    return box
  }

  async close (): Promise<void> {
    for (const b of [...this.live]) {
      await b.kill()
      await b.remove().catch(() => {})
    }
    for (const d of new Set(this.bases.values())) await removeDir(d).catch(() => {})
  }
}

/** cgroup v2: one directory, its controllers enabled by the server's own group for its runs. */
class V2Boxes implements Boxes {
  readonly enforced = 'cgroup2' as const
  private readonly live = new Set<Box>()

  constructor (private readonly base: string, readonly controls: ReadonlySet<'memory' | 'pids' | 'cpu'>) {}

  create (name: string, limits: RunLimits): Box {
    const d = join(this.base, name)
    mkdirSync(d)
    const file = (f: string): string => join(d, f)
    let peak = 0
    const box: Box = {
      procsFiles: [file('cgroup.procs')],
      apply: (l) => {
        if (this.controls.has('memory')) {
          writeFileSync(file('memory.max'), l.memoryMax === undefined ? 'max' : String(l.memoryMax))
          if (existsSync(file('memory.swap.max'))) writeFileSync(file('memory.swap.max'), l.memoryMax === undefined ? 'max' : '0')
          // The whole run goes at once: never a half of it left running without the part the kernel took.
          if (existsSync(file('memory.oom.group'))) writeFileSync(file('memory.oom.group'), '1')
        }
        if (this.controls.has('pids')) writeFileSync(file('pids.max'), l.pidsMax === undefined ? 'max' : String(l.pidsMax))
        if (this.controls.has('cpu')) writeFileSync(file('cpu.max'), l.cpuMax === undefined ? `max ${PERIOD_US}` : `${Math.max(1000, Math.round(l.cpuMax * PERIOD_US))} ${PERIOD_US}`)
      },
      hit: async () => {
        if (this.controls.has('memory')) {
          const ev = await tryRead(file('memory.events'))
          if (countOf(ev, 'oom_kill') > 0 || countOf(ev, 'oom_group_kill') > 0) return 'memory'
          // Older kernels have no memory.peak: sampled as the run is watched.
          peak = Math.max(peak, Number(await tryRead(file('memory.current'))) || 0)
        }
        if (this.controls.has('pids') && countOf(await tryRead(file('pids.events')), 'max') > 0) return 'pids'
        return null
      },
      usage: async () => {
        const p = Number(await tryRead(file('memory.peak')))
        const us = countOf(await tryRead(file('cpu.stat')), 'usage_usec')
        const peakBytes = Number.isFinite(p) && p > 0 ? p : peak
        return { peak_memory_bytes: peakBytes > 0 ? peakBytes : null, cpu_seconds: Math.round(us / 1000) / 1000 }
      },
      kill: async () => {
        let killed = 0
        const procs = file('cgroup.procs')
        for (let i = 0; i < 100; i++) {
          const pids = pidsIn(procs)
          if (pids.length === 0) break
          killed += pids.length
          try {
            // One write, the kernel kills the whole group, forks in flight included.
            writeFileSync(file('cgroup.kill'), '1')
          } catch {
            killPids(pids)
          }
          await sleep(i < 10 ? 5 : 20)
        }
        return killed
      },
      remove: async () => {
        this.live.delete(box)
        await removeDir(d)
      }
    }
    this.live.add(box)
    try {
      box.apply(limits)
    } catch (err) {
      void box.remove().catch(() => {})
      throw err
    }
    return box
  }

  async close (): Promise<void> {
    for (const b of [...this.live]) {
      await b.kill()
      await b.remove().catch(() => {})
    }
    await removeDir(this.base).catch(() => {})
  }
}

/** Where the cgroup file systems are, and which group this process is in (tests give their own). */
export interface CgroupView {
  mountinfo: string
  procCgroup: string
  pid: number
}

const ownView = (): CgroupView => ({ mountinfo: read('/proc/self/mountinfo'), procCgroup: read('/proc/self/cgroup'), pid: process.pid })

/**
 * A v2 hierarchy the server may use: its group's controllers include memory and pids, and it can
 * enable them for a child. A group with processes in it cannot give its children controllers (the
 * kernel's "no internal processes" rule), so the processes of the server's group are first moved
 * into a leaf of their own (`ccapi-server`), as container entry points do.
 */
async function v2Boxes (view: CgroupView, why: string[]): Promise<Boxes | null> {
  const mount = cgroupMounts(view.mountinfo).find(m => m.fstype === 'cgroup2')
  const own = ownGroups(view.procCgroup).get('')
  if (mount === undefined || own === undefined) return null
  const dir = dirIn(mount, own)
  let available: string[]
  try {
    available = read(join(dir, 'cgroup.controllers')).trim().split(/\s+/)
  } catch {
    return null
  }
  if (!available.includes('memory') || !available.includes('pids')) {
    why.push(`cgroup v2 at ${dir} offers no memory and pids controllers (${available.join(' ') || 'none'})`)
    return null
  }
  const want = ['memory', 'pids', ...(available.includes('cpu') ? ['cpu'] : [])]
  const enable = (d: string): void => writeFileSync(join(d, 'cgroup.subtree_control'), want.map(c => `+${c}`).join(' '))
  try {
    try {
      enable(dir)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EBUSY') throw err
      const leaf = join(dir, 'ccapi-server')
      if (!existsSync(leaf)) mkdirSync(leaf)
      for (let i = 0; i < 10 && pidsIn(join(dir, 'cgroup.procs')).length > 0; i++) {
        for (const pid of pidsIn(join(dir, 'cgroup.procs'))) {
          try {
            writeFileSync(join(leaf, 'cgroup.procs'), String(pid))
          } catch { /* exited meanwhile, or a kernel thread */ }
        }
      }
      enable(dir)
    }
    await sweepLeftovers([dir], d => [join(d, 'cgroup.procs')])
    const base = join(dir, `ccapi-${view.pid}`)
    if (!existsSync(base)) mkdirSync(base)
    enable(base)
    return new V2Boxes(base, new Set(want as Array<'memory' | 'pids' | 'cpu'>))
  } catch (err) {
    why.push(`cgroup v2 at ${dir} is not writable by the server: ${(err as Error).message}`)
    return null
  }
}

/** The v1 controllers the server may make groups in: memory and pids at least. */
async function v1Boxes (view: CgroupView, why: string[]): Promise<Boxes | null> {
  const mounts = cgroupMounts(view.mountinfo).filter(m => m.fstype === 'cgroup')
  const own = ownGroups(view.procCgroup)
  const bases = new Map<string, string>()
  const parents: string[] = []
  for (const c of ['memory', 'pids', 'cpu', 'cpuacct', 'freezer']) {
    const m = mounts.find(m => m.options.includes(c))
    const path = own.get(c)
    if (m === undefined || path === undefined) continue
    const parent = dirIn(m, path)
    const base = join(parent, `ccapi-${view.pid}`)
    try {
      if (!existsSync(base)) mkdirSync(base)
      bases.set(c, base)
      parents.push(parent)
    } catch (err) {
      if (c === 'memory' || c === 'pids') why.push(`cgroup v1 ${c} at ${parent} is not writable by the server: ${(err as Error).message}`)
    }
  }
  if (!bases.has('memory') || !bases.has('pids')) {
    for (const b of new Set(bases.values())) await removeDir(b).catch(() => {})
    if (mounts.length > 0 && why.length === 0) why.push('the host mounts no cgroup v1 memory and pids controllers')
    return null
  }
  await sweepLeftovers([...new Set(parents)], d => [join(d, 'cgroup.procs')])
  return new V1Boxes(bases)
}

/**
 * Remove the groups of servers no longer alive (as every server does at start), in the hierarchies
 * this process is in: for a supervisor (or a test) that killed a server outright.
 */
export async function sweepDeadServers (view: CgroupView = ownView()): Promise<void> {
  const own = ownGroups(view.procCgroup)
  const parents: string[] = []
  for (const m of cgroupMounts(view.mountinfo)) {
    const key = m.fstype === 'cgroup2' ? '' : m.options.find(o => own.has(o) && o !== '')
    const path = key === undefined ? undefined : own.get(key)
    if (path !== undefined) parents.push(dirIn(m, path))
  }
  await sweepLeftovers([...new Set(parents)], d => [join(d, 'cgroup.procs')])
}

/**
 * The groups runs get on this host: v2 where delegated, else v1, else null with the reasons
 * (the server then falls back to rlimits). Found once at start.
 */
export async function boxesFor (view: CgroupView = ownView()): Promise<{ boxes: Boxes | null, why: string[] }> {
  const why: string[] = []
  if (process.platform !== 'linux') return { boxes: null, why: ['not Linux'] }
  const boxes = await v2Boxes(view, why) ?? await v1Boxes(view, why)
  return { boxes, why }
}

/**
 * The server is never the process the kernel picks when memory runs out: its own OOM score is
 * lowered (root only), runs' raised (`RUN_OOM_SCORE_ADJ` in the launch). True when it was lowered.
 */
export function protectFromOom (): boolean {
  try {
    writeFileSync('/proc/self/oom_score_adj', '-900')
    return true
  } catch {
    return false
  }
}

/** The OOM score adjustment every run's first process gives itself (inherited by its tree). */
export const RUN_OOM_SCORE_ADJ = 500
