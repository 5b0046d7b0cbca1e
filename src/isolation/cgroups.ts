import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { cgroupMounts, dirIn, ownGroups, ownView, sweepLeftovers, type Boxes, type CgroupView } from './cgroup-files.js'
import { v1Boxes } from './cgroup-v1.js'
import { v2Boxes } from './cgroup-v2.js'

export { cgroupMounts, ownGroups, type Box, type Boxes, type CgroupView } from './cgroup-files.js'

/**
 * Runs held to their limits by the kernel: each run's whole tree (the CLI, its tools, whatever
 * they start) lives in a control group of its own, made when it launches and removed when it
 * ends. cgroup v2 where the server's group is delegated to it, else the v1 controllers the host
 * mounts; `boxesFor` finds which, once at start. The same group is the run's containment: killing
 * it kills everything in it, whatever session or parent a process gave itself.
 */

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
