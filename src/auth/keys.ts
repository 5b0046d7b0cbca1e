import { Type, type Static } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync, renameSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { ConfigError } from '../config.js'
import { parseBytes, type RunLimits } from '../domain/limits.js'
import { MCP_NAME } from '../domain/mcp.js'

/**
 * What a key may do. `runs:write` starts and cancels its own runs; `runs:read` reads its own runs;
 * `runs:read_all` reads every key's runs (a dashboard) and changes nothing; `approvals:write`
 * answers the approvals of the runs it may read (a person deciding for a bot), without starting
 * anything; `files:read` and `files:write` reach the files of its workspace (`runs:write` implies
 * both); `admin` does all of it, in every workspace.
 */
export const SCOPES = ['runs:write', 'runs:read', 'runs:read_all', 'approvals:write', 'files:read', 'files:write', 'admin'] as const
export type Scope = typeof SCOPES[number]

const KeyEntrySchema = Type.Object({
  // Also a directory name (agent identities): not `.` or `..`.
  name: Type.String({ pattern: '^(?!\\.+$)[A-Za-z0-9_.-]{1,64}$' }),
  key_sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
  scopes: Type.Array(Type.Union(SCOPES.map(s => Type.Literal(s))), { minItems: 1 }),
  max_concurrent_runs: Type.Optional(Type.Integer({ minimum: 1 })),
  daily_budget_usd: Type.Optional(Type.Number({ exclusiveMinimum: 0 })),
  rate_limit_per_min: Type.Optional(Type.Integer({ minimum: 1 })),
  // Lower resource limits for this key's runs than the server's RUN_*_MAX (never higher).
  limits: Type.Optional(Type.Object({
    memory_max: Type.Optional(Type.Union([Type.String(), Type.Integer({ minimum: 1 })])),
    pids_max: Type.Optional(Type.Integer({ minimum: 1 })),
    cpu_max: Type.Optional(Type.Number({ exclusiveMinimum: 0 })),
    disk_max: Type.Optional(Type.Union([Type.String(), Type.Integer({ minimum: 1 })]))
  }, { additionalProperties: false })),
  // The operator's MCP servers (MCP_CONFIG_FILE) its runs may name; absent: all of them, []: none.
  mcp_servers: Type.Optional(Type.Array(Type.String({ pattern: MCP_NAME })))
}, { additionalProperties: false })
export type KeyEntry = Static<typeof KeyEntrySchema>

/** `API_KEYS_FILE`: `{ "keys": [ … ] }` (or the bare list), in JSON or YAML. */
export const KeyFileSchema = Type.Object({ keys: Type.Array(KeyEntrySchema) }, { additionalProperties: false })
export type KeyFile = Static<typeof KeyFileSchema>

/** A key as the server holds it: only its hash. */
export interface ApiKey {
  name: string
  digest: Buffer
  scopes: ReadonlySet<Scope>
  maxConcurrentRuns?: number
  dailyBudgetUsd?: number
  rateLimitPerMin?: number
  /** Resource limits of its own runs, narrower than the server's. */
  limits?: RunLimits
  /** The operator's MCP servers its runs may name (undefined: all; empty: none). */
  mcpServers?: readonly string[]
}

export const sha256Hex = (key: string): string => createHash('sha256').update(key).digest('hex')

/** A new random key: `cca_` and 43 characters of base64url (256 bits). */
export function generateKey (): string {
  return 'cca_' + randomBytes(32).toString('base64url')
}

/** Read a key file (JSON or YAML); a broken file is a `ConfigError` naming what is wrong. */
export function readKeyFile (path: string): KeyFile {
  if (!existsSync(path)) return { keys: [] }
  let data: unknown
  try {
    const text = readFileSync(path, 'utf8')
    data = /\.ya?ml$/i.test(path) ? parseYaml(text) : JSON.parse(text)
  } catch (err) {
    throw new ConfigError(`API_KEYS_FILE ${path}: ${(err as Error).message}`)
  }
  if (Array.isArray(data)) data = { keys: data }
  if (data === null || data === undefined) data = { keys: [] }
  const entries = (data as { keys?: unknown }).keys
  if (Array.isArray(entries)) {
    entries.forEach((e, i) => {
      for (const s of (e as { scopes?: unknown })?.scopes as unknown[] ?? []) {
        if (!(SCOPES as readonly unknown[]).includes(s)) throw new ConfigError(`API_KEYS_FILE ${path}: /keys/${i}/scopes: unknown scope ${String(s)} (known: ${SCOPES.join(', ')})`)
      }
    })
  }
  if (!Value.Check(KeyFileSchema, data)) {
    const first = [...Value.Errors(KeyFileSchema, data)][0]
    throw new ConfigError(`API_KEYS_FILE ${path}: ${first?.path ?? ''} ${first?.message ?? 'is invalid'}`)
  }
  const names = new Set<string>()
  data.keys.forEach((k, i) => {
    if (names.has(k.name)) throw new ConfigError(`API_KEYS_FILE ${path}: the name ${k.name} is used twice`)
    names.add(k.name)
    try {
      keyLimits(k)
    } catch (err) {
      throw new ConfigError(`API_KEYS_FILE ${path}: /keys/${i}/limits: ${(err as Error).message}`)
    }
  })
  return data
}

/** Write a key file atomically (JSON, or YAML for a .yaml/.yml path). */
export async function writeKeyFile (path: string, file: KeyFile): Promise<void> {
  const { stringify } = await import('yaml')
  const text = /\.ya?ml$/i.test(path) ? stringify(file) : JSON.stringify(file, null, 2) + '\n'
  const tmp = `${path}.${process.pid}.tmp`
  writeFileSync(tmp, text, { mode: 0o600 })
  renameSync(tmp, path)
}

/** The entry as the server holds it. */
export function toApiKey (e: KeyEntry): ApiKey {
  const key: ApiKey = { name: e.name, digest: Buffer.from(e.key_sha256, 'hex'), scopes: new Set(e.scopes) }
  if (e.max_concurrent_runs !== undefined) key.maxConcurrentRuns = e.max_concurrent_runs
  if (e.daily_budget_usd !== undefined) key.dailyBudgetUsd = e.daily_budget_usd
  if (e.rate_limit_per_min !== undefined) key.rateLimitPerMin = e.rate_limit_per_min
  const limits = keyLimits(e)
  if (limits !== undefined) key.limits = limits
  if (e.mcp_servers !== undefined) key.mcpServers = e.mcp_servers
  return key
}

/** A key's `limits` as run limits (sizes as `512M` or bytes); throws naming a bad value. */
function keyLimits (e: KeyEntry): RunLimits | undefined {
  const l = e.limits
  if (l === undefined) return undefined
  const size = (name: string, v: string | number | undefined): number | undefined => {
    if (v === undefined) return undefined
    const n = typeof v === 'number' ? v : parseBytes(v)
    if (n === undefined) throw new Error(`${name}: ${String(v)} is no limit; leave it out to take the server's`)
    return n
  }
  const out: RunLimits = {}
  const memoryMax = size('memory_max', l.memory_max)
  const diskMax = size('disk_max', l.disk_max)
  // The same floors as RUN_MEMORY_MAX and RUN_PIDS_MAX: below them every run of the key would fail.
  if (memoryMax !== undefined && memoryMax < 256 * 1024 * 1024) throw new Error(`memory_max: ${String(l.memory_max)} is below 256M; the Claude Code CLI alone needs about 250 MB`)
  if (l.pids_max !== undefined && l.pids_max < 32) throw new Error(`pids_max: ${l.pids_max} is below 32; the CLI's own threads need about 20`)
  if (memoryMax !== undefined) out.memoryMax = memoryMax
  if (l.pids_max !== undefined) out.pidsMax = l.pids_max
  if (l.cpu_max !== undefined) out.cpuMax = l.cpu_max
  if (diskMax !== undefined) out.diskMax = diskMax
  return out
}

/**
 * The keys the server accepts. A presented key is hashed and compared with every known digest
 * in constant time (no early exit), so neither a key nor which key matched leaks through timing.
 */
export class KeyRing {
  constructor (readonly keys: readonly ApiKey[]) {}

  match (presented: string): ApiKey | undefined {
    const digest = createHash('sha256').update(presented).digest()
    let found: ApiKey | undefined
    for (const k of this.keys) {
      if (timingSafeEqual(digest, k.digest) && found === undefined) found = k
    }
    return found
  }
}

/** Whether a key may act with `scope` (`admin` may do everything; `runs:read_all` reads too). */
export function allows (key: ApiKey, scope: Scope): boolean {
  if (key.scopes.has('admin') || key.scopes.has(scope)) return true
  if (scope === 'runs:read') return key.scopes.has('runs:read_all')
  // A key that runs agents in its workspace may put files there and take them back.
  if (scope === 'files:read') return key.scopes.has('files:write') || key.scopes.has('runs:write')
  if (scope === 'files:write') return key.scopes.has('runs:write')
  return false
}
