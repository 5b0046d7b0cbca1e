/** The resources one run's whole process tree may hold. Absent: no limit of that kind. */
export interface RunLimits {
  /** Bytes of memory (RSS and the page cache charged to it). */
  memoryMax?: number
  /** Processes and threads at once. */
  pidsMax?: number
  /** CPUs (fractions allowed). */
  cpuMax?: number
  /** Bytes a run may write to one file and hold in its private temp space. */
  diskMax?: number
}

/** The limit a run hit, as its result names it. */
export const LIMIT_NAMES = ['memory', 'pids', 'cpu', 'disk'] as const
export type LimitName = typeof LIMIT_NAMES[number]

/** How the machine holds runs to their limits (what the server could set up). */
export type LimitEnforcement = 'cgroup2' | 'cgroup1' | 'rlimit' | 'none'

const UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }

/**
 * Bytes from `4G`, `1536M`, `512k`, `1.5G` or a plain number (binary units, an optional `B` or
 * `iB`); `none`, `max` or `0` is no limit (undefined). Anything else throws, naming the value.
 */
export function parseBytes (value: string): number | undefined {
  const v = value.trim()
  if (/^(none|max|0)$/i.test(v)) return undefined
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?$/.exec(v)
  if (m === null) throw new Error(`${value} is not a size (e.g. 512M, 4G, or none)`)
  const bytes = Math.floor(Number(m[1]) * (UNITS[(m[2] ?? '').toUpperCase()] ?? 1))
  if (!Number.isSafeInteger(bytes) || bytes < 1) throw new Error(`${value} is not a size (e.g. 512M, 4G, or none)`)
  return bytes
}

/** The lower of each limit: a key's own values can only narrow the server's. */
export function narrower (server: RunLimits, key: RunLimits | undefined): RunLimits {
  if (key === undefined) return server
  const pick = (a: number | undefined, b: number | undefined): number | undefined => a === undefined ? b : b === undefined ? a : Math.min(a, b)
  const out: RunLimits = {}
  const memoryMax = pick(server.memoryMax, key.memoryMax)
  const pidsMax = pick(server.pidsMax, key.pidsMax)
  const cpuMax = pick(server.cpuMax, key.cpuMax)
  const diskMax = pick(server.diskMax, key.diskMax)
  if (memoryMax !== undefined) out.memoryMax = memoryMax
  if (pidsMax !== undefined) out.pidsMax = pidsMax
  if (cpuMax !== undefined) out.cpuMax = cpuMax
  if (diskMax !== undefined) out.diskMax = diskMax
  return out
}

/** What a run's tree used, as its result reports it (null where the machine could not tell). */
export interface ResourceUsage {
  peak_memory_bytes: number | null
  cpu_seconds: number | null
}
