import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { RunLimits } from '../domain/limits.js'
import { cgroupMounts, countOf, dirIn, killPids, ownGroups, pidsIn, PERIOD_US, removeDir, sweepLeftovers, tryRead, LiveBoxes, type Box, type Boxes, type CgroupView } from './cgroup-files.js'

/** cgroup v1: one directory per controller, all named alike. */
class V1Boxes implements Boxes {
  readonly enforced = 'cgroup1' as const
  readonly controls: ReadonlySet<'memory' | 'pids' | 'cpu'>
  private readonly live = new LiveBoxes()

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
          // The combined limit may never be below the memory limit: raising, it goes first; lowering, last.
          const current = Number(readFileSync(join(mem, 'memory.limit_in_bytes'), 'utf8'))
          const raising = l.memoryMax === undefined || !(l.memoryMax <= current)
          if (hasSwap && raising) writeFileSync(memsw, v)
          writeFileSync(join(mem, 'memory.limit_in_bytes'), v)
          if (hasSwap && !raising) writeFileSync(memsw, v)
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
        this.live.forget(box)
        for (const d of unique) await removeDir(d)
      }
    }
    return this.live.limit(box, limits)
  }

  async close (): Promise<void> {
    await this.live.endAll()
    for (const d of new Set(this.bases.values())) await removeDir(d).catch(() => {})
  }
}

/** The v1 controllers the server may make groups in: memory and pids at least. */
export async function v1Boxes (view: CgroupView, why: string[]): Promise<Boxes | null> {
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
