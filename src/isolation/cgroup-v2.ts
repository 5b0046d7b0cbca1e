import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { RunLimits } from '../domain/limits.js'
import { cgroupMounts, countOf, dirIn, killPids, ownGroups, pidsIn, PERIOD_US, read, removeDir, sweepLeftovers, tryRead, LiveBoxes, type Box, type Boxes, type CgroupView } from './cgroup-files.js'

/** cgroup v2: one directory, its controllers enabled by the server's own group for its runs. */
class V2Boxes implements Boxes {
  readonly enforced = 'cgroup2' as const
  private readonly live = new LiveBoxes()

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
        this.live.forget(box)
        await removeDir(d)
      }
    }
    return this.live.limit(box, limits)
  }

  async close (): Promise<void> {
    await this.live.endAll()
    await removeDir(this.base).catch(() => {})
  }
}

/**
 * A v2 hierarchy the server may use: its group's controllers include memory and pids, and it can
 * enable them for a child. A group with processes in it cannot give its children controllers (the
 * kernel's "no internal processes" rule), so the processes of the server's group are first moved
 * into a leaf of their own (`ccapi-server`), as container entry points do.
 */
export async function v2Boxes (view: CgroupView, why: string[]): Promise<Boxes | null> {
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
