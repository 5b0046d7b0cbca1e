import { existsSync } from 'node:fs'
import type { LimitEnforcement, RunLimits } from '../domain/limits.js'
import { boxesFor, protectFromOom, RUN_OOM_SCORE_ADJ, type Boxes } from './cgroups.js'

/** How this host holds runs to their limits, found once at start. */
export interface LimitsSetup {
  enforced: LimitEnforcement
  /** The runs' control groups (cgroup1, cgroup2), else null. */
  boxes: Boxes | null
  /** util-linux's prlimit: a file's size everywhere, and at `rlimit` memory and processes too. */
  prlimit: string | null
  /** Why no control groups (when none). */
  why: string[]
  /** Whether the server's own OOM score was lowered (root only). */
  oomProtected: boolean
}

/**
 * RLIMIT_DATA counts what a process reserves writable, not what it uses: the CLI (a Bun binary)
 * reserves about 1 GiB at start and aborts below it. Under rlimits a memory limit is never lower.
 */
export const RLIMIT_DATA_FLOOR = 2 * 1024 ** 3

const PRLIMIT = ['/usr/bin/prlimit', '/bin/prlimit', '/usr/local/bin/prlimit'].find(p => existsSync(p)) ?? null

/**
 * Find what this host allows: control groups (v2 where delegated, v1 controllers otherwise),
 * else rlimits (prlimit), else nothing. `LIMITS=off`-like switching is not offered: a host that
 * allows nothing says so (`none`), loudly, at start.
 */
export async function setUpLimits (): Promise<LimitsSetup> {
  const { boxes, why } = await boxesFor()
  const oomProtected = protectFromOom()
  const enforced: LimitEnforcement = boxes !== null ? boxes.enforced : PRLIMIT !== null ? 'rlimit' : 'none'
  return { enforced, boxes, prlimit: PRLIMIT, why, oomProtected }
}

/**
 * The rlimits a launch sets (prlimit's options): the size of any one file the run writes
 * (`diskMax`) wherever prlimit exists; and where there are no control groups, the writable memory of
 * each process (`memoryMax`, RLIMIT_DATA: not the address space, which WebAssembly's and some
 * runtimes' large reservations would exceed) and the processes of the run's user (`pidsMax`: per user, so it holds
 * only with agent identities).
 */
export function rlimitOptions (limits: RunLimits, setup: Pick<LimitsSetup, 'enforced' | 'prlimit'>, ownUid: boolean): string[] {
  if (setup.prlimit === null) return []
  const opts: string[] = []
  if (limits.diskMax !== undefined) opts.push(`--fsize=${limits.diskMax}`)
  if (setup.enforced === 'rlimit') {
    if (limits.memoryMax !== undefined) opts.push(`--data=${Math.max(limits.memoryMax, RLIMIT_DATA_FLOOR)}`)
    // Counted over every process of the uid: only an agent identity's are the run's (and its key's).
    if (limits.pidsMax !== undefined && ownUid) opts.push(`--nproc=${limits.pidsMax}`)
  }
  return opts
}

/**
 * The first step of every limited launch, a shell that (1) raises its OOM score, so that when
 * the machine runs out of memory a run's process goes before the server, (2) sets its rlimits, and
 * (3) waits on descriptor `fd` until the server has put it in the run's control group, before it
 * runs anything: no process of the run ever exists outside its group. Then it becomes the launch.
 * Arguments: PRLIMIT OPTIONS… `--` COMMAND ARGS…
 */
export function gateScript (fd: number): string {
  return `echo ${RUN_OOM_SCORE_ADJ} > /proc/self/oom_score_adj 2>/dev/null
pl=$1; shift; rl=
while [ "$1" != -- ]; do rl="$rl $1"; shift; done
shift
if [ -n "$rl" ]; then "$pl" --pid $$ $rl || { echo "ccapi-limits: the run's rlimits could not be set" >&2; exit 125; }; fi
read -r g <&${fd} || g=
[ "$g" = go ] || { echo "ccapi-limits: the run could not be placed in its control group" >&2; exit 125; }
exec ${fd}<&-
exec "$@"
`
}
