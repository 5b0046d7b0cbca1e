import { Type, type Static } from '@sinclair/typebox'
import { existsSync, mkdirSync, readFileSync, realpathSync, statSync } from 'node:fs'
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path'
import { PACKAGE_ROOT } from './package-info.js'
import { PERMISSION_MODES, type PermissionMode } from './domain/run.js'
import { parseBytes, type RunLimits } from './domain/limits.js'
import { parseMcpConfig, type McpServerDef } from './domain/mcp.js'

/**
 * Every setting the server reads, in one schema. `@fastify/env` validates the environment against
 * it; nothing else in the code base reads `process.env`.
 */
export const ConfigSchema = Type.Object({
  ENABLE_AUTH: Type.Boolean({ default: true }),
  CLAUDE_API_KEY: Type.Optional(Type.String()),
  HOST: Type.String({ default: '0.0.0.0' }),
  TRUST_PROXY: Type.String({ default: 'false' }),
  PORT: Type.Integer({ default: 8000, minimum: 0, maximum: 65535 }),
  CLAUDE_CODE_PATH: Type.Optional(Type.String()),
  DEFAULT_WORKING_DIR: Type.Optional(Type.String()),
  ALLOWED_WORKING_DIRS: Type.Optional(Type.String()),
  // No schema default: unset, it follows MAX_TIMEOUT down (300 s, or MAX_TIMEOUT when that is lower).
  DEFAULT_TIMEOUT: Type.Optional(Type.Integer({ minimum: 1 })),
  // At most what a timer can wait (24.8 days).
  MAX_TIMEOUT: Type.Integer({ default: 3600, minimum: 1, maximum: 2_147_483 }),
  DEFAULT_PERMISSION_MODE: Type.Union(PERMISSION_MODES.map(m => Type.Literal(m)), { default: 'acceptEdits' }),
  ALLOWED_PERMISSION_MODES: Type.String({ default: 'default,acceptEdits,plan,dontAsk' }),
  MAX_CONCURRENT_RUNS: Type.Integer({ default: 4, minimum: 1 }),
  MAX_QUEUED_RUNS: Type.Integer({ default: 32, minimum: 0 }),
  // Follow-up messages waiting for a run's agent, and the bytes they hold (text and base64 images).
  MAX_QUEUED_MESSAGES: Type.Integer({ default: 32, minimum: 1 }),
  MAX_QUEUED_MESSAGE_BYTES: Type.Integer({ default: 8 * 1024 * 1024, minimum: 1024 }),
  CORS_ORIGINS: Type.String({ default: '' }),
  LOG_LEVEL: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map(l => Type.Literal(l)), { default: 'info' }),
  DATA_DIR: Type.String({ default: './data' }),
  // postgres://user:password@host:port/database: the run store in PostgreSQL instead of DATA_DIR's SQLite file.
  DATABASE_URL: Type.Optional(Type.String()),
  // Cluster mode: how long a running run stays its instance's without a renewal; a dead
  // instance's runs are ended as interrupted once it lapses.
  RUN_LEASE_S: Type.Integer({ default: 30, minimum: 2, maximum: 3600 }),
  MAX_PROMPT_CHARS: Type.Integer({ default: 200_000, minimum: 1 }),
  MAX_BODY_BYTES: Type.Integer({ default: 4 * 1024 * 1024, minimum: 1024 }),
  MAX_UPLOAD_BYTES: Type.Integer({ default: 100 * 1024 * 1024, minimum: 1024 }),
  MAX_ARCHIVE_ENTRIES: Type.Integer({ default: 100_000, minimum: 1 }),
  // 1 MiB: several times what a model can answer in one response (64k output tokens ≈ 256 KB).
  MAX_OUTPUT_BYTES: Type.Integer({ default: 1024 * 1024, minimum: 1024 }),
  MAX_LINE_BYTES: Type.Integer({ default: 16 * 1024 * 1024, minimum: 1024 }),
  CLAUDE_SETTING_SOURCES: Type.String({ default: 'user' }),
  PASS_ENV: Type.String({ default: '' }),
  KILL_GRACE_MS: Type.Integer({ default: 3000, minimum: 0 }),
  SSE_KEEPALIVE_MS: Type.Integer({ default: 15_000, minimum: 100 }),
  APPROVAL_TIMEOUT_S: Type.Integer({ default: 300, minimum: 1, maximum: 86_400 }),
  // Parked CLIs (~230-260 MB each) that new sessions start on; 0 turns warm start off.
  WARM_SPARES: Type.Integer({ default: 1, minimum: 0, maximum: 64 }),
  // Memory for spares of the option sets runs send (one per set, most recent first); 0: none.
  WARM_MEMORY_MAX: Type.String({ default: '1G' }),
  // A session's CLI waits this long after a run for the session's next turn; 0: never.
  SESSION_KEEPALIVE_S: Type.Integer({ default: 60, minimum: 0, maximum: 3600 }),
  REQUEST_TIMEOUT_S: Type.Integer({ default: 30, minimum: 1, maximum: 3600 }),
  // 0: derived from the open-file limit (three quarters of it, less 64 for runs and the store).
  MAX_CONNECTIONS: Type.Integer({ default: 0, minimum: 0 }),
  CLI_PROBE_INTERVAL_S: Type.Integer({ default: 60, minimum: 1 }),
  SHUTDOWN_GRACE_S: Type.Integer({ default: 25, minimum: 0 }),
  RUN_RETENTION_DAYS: Type.Number({ default: 30, exclusiveMinimum: 0 }),
  RUN_RETENTION_MAX_RUNS: Type.Integer({ default: 10_000, minimum: 1 }),
  API_KEYS_FILE: Type.Optional(Type.String()),
  METRICS_TOKEN: Type.Optional(Type.String()),
  WEBHOOK_ALLOWED_HOSTS: Type.String({ default: '' }),
  WEBHOOK_SECRET: Type.Optional(Type.String()),
  WEBHOOK_MAX_ATTEMPTS: Type.Integer({ default: 6, minimum: 1, maximum: 20 }),
  WEBHOOK_BACKOFF_MS: Type.Integer({ default: 2000, minimum: 1 }),
  WEBHOOK_TIMEOUT_MS: Type.Integer({ default: 10_000, minimum: 100 }),
  ISOLATION: Type.Union(['auto', 'uid', 'sandbox', 'none'].map(l => Type.Literal(l)), { default: 'auto' }),
  AGENT_UID_BASE: Type.Integer({ default: 20_000, minimum: 1000, maximum: 2_000_000_000 }),
  AGENTS_DIR: Type.String({ default: './agents' }),
  // Host-wide: every server on the host reserves its agents' uids here, so no two share one.
  AGENT_UID_REGISTRY_DIR: Type.String({ default: '/var/lib/claude-code-api/agent-uids' }),
  // Each run's whole process tree: memory (4G, 1536M, none), processes and threads, CPUs, and the
  // bytes of one file it writes and of its private temp space. Keys may carry lower ones.
  RUN_MEMORY_MAX: Type.String({ default: '4G' }),
  RUN_PIDS_MAX: Type.String({ default: '512' }),
  RUN_CPU_MAX: Type.Optional(Type.String()),
  RUN_DISK_MAX: Type.Optional(Type.String()),
  // At ISOLATION=sandbox: egress (a filtering proxy to public addresses), none, or host (no network namespace).
  RUN_NETWORK: Type.Union(['egress', 'none', 'host'].map(l => Type.Literal(l)), { default: 'egress' }),
  RUN_CHANGES: Type.Union(['on', 'off'].map(l => Type.Literal(l)), { default: 'on' }),
  MCP_CONFIG_FILE: Type.Optional(Type.String()),
  MCP_ALLOWED_HOSTS: Type.String({ default: '' }),
  RUN_EGRESS_ALLOW: Type.String({ default: '' })
})
export type RawConfig = Static<typeof ConfigSchema>

/** The environment the server itself was started with (for the child's allow-list). */
export type Environment = Record<string, string | undefined>

/** Settings after parsing lists and resolving directories: what the rest of the code uses. */
export interface Settings {
  enableAuth: boolean
  apiKey: string | undefined
  host: string
  port: number
  trustProxy: TrustProxy
  claudePath: string | undefined
  defaultWorkingDir: string
  allowedRoots: string[]
  defaultTimeoutS: number
  maxTimeoutS: number
  defaultPermissionMode: PermissionMode
  allowedPermissionModes: PermissionMode[]
  maxConcurrentRuns: number
  maxQueuedRuns: number
  /** Follow-up messages waiting for one run's agent, at most. */
  maxQueuedMessages: number
  /** ... and the bytes they hold at most (one message always fits an empty queue). */
  maxQueuedMessageBytes: number
  corsOrigins: string[]
  logLevel: string
  dataDir: string
  /** The run store in PostgreSQL (unset: SQLite in `dataDir`). */
  databaseUrl: string | undefined
  /** Cluster mode: the lease of a running run (ms). */
  runLeaseMs: number
  maxPromptChars: number
  maxBodyBytes: number
  /** The largest file (or archive, unpacked) `/api/files` takes. */
  maxUploadBytes: number
  /** The most entries an uploaded archive may hold. */
  maxArchiveEntries: number
  maxOutputBytes: number
  maxLineBytes: number
  settingSources: string
  passEnv: string[]
  killGraceMs: number
  sseKeepAliveMs: number
  maxConnections: number
  approvalTimeoutS: number
  warmSpares: number
  /** `WARM_MEMORY_MAX` in bytes (0: no spares for option sets). */
  warmMemoryMax: number
  sessionKeepAliveS: number
  cliProbeIntervalS: number
  shutdownGraceS: number
  retentionDays: number
  retentionMaxRuns: number
  /** `API_KEYS_FILE`, else `./api-keys.json` when it exists; unset: no named keys. */
  apiKeysFile: string | undefined
  metricsToken: string | undefined
  webhookAllowedHosts: string[]
  webhookSecret: string | undefined
  webhookMaxAttempts: number
  webhookBackoffMs: number
  webhookTimeoutMs: number
  isolation: 'auto' | 'uid' | 'sandbox' | 'none'
  agentUidBase: number
  agentsDir: string
  /** Where the servers of this host reserve their agents' uids (one file per uid). */
  agentUidRegistryDir: string
  /** What one run's tree may hold at most (`RUN_*_MAX`); keys may narrow it. */
  runLimits: RunLimits
  /** A run's network at `sandbox`: `egress` through the filtering proxy, `none`, or `host`'s own. */
  runNetwork: 'egress' | 'none' | 'host'
  /** Record each run's working directory before and after it (`/api/runs/{id}/changes`, revert). */
  recordChanges: boolean
  /** The operator's MCP servers, by name (`MCP_CONFIG_FILE`); none attached to a run unasked. */
  mcpServers: Record<string, McpServerDef>
  /** Hosts (`host` or `host:port`) inline MCP servers of requests may be on (`MCP_ALLOWED_HOSTS`). */
  mcpAllowedHosts: string[]
  /** Hosts the egress proxy lets runs reach (`*.example.com` for subdomains); empty: any public host. */
  egressAllow: string[]
  /** The server's own environment: the source of operator credentials for the CLI. */
  serverEnv: Environment
}

/** Thrown for settings that parse but make no sense together; the server refuses to start. */
export class ConfigError extends Error {
  override name = 'ConfigError'
}

/** An empty variable (`KEY=` in a .env file) means unset. */
const unlessEmpty = (s: string | undefined): string | undefined => s === undefined || s.trim() === '' ? undefined : s

const list = (s: string | undefined): string[] =>
  (s ?? '').split(',').map(x => x.trim()).filter(x => x.length > 0)

/** Where runs execute when nothing is configured: a directory of its own, next to nothing of the server's. */
export const DEFAULT_WORKSPACE = 'workspace'

/**
 * The keys file when `API_KEYS_FILE` is unset, relative to the working directory: the one
 * `npm run keys -- add` writes by default, read by the server when it exists.
 */
export const DEFAULT_KEYS_FILE = 'api-keys.json'

/** The fallback for a request without `timeout` when `DEFAULT_TIMEOUT` is unset (capped by `MAX_TIMEOUT`). */
export const DEFAULT_TIMEOUT_S = 300

/** True when `child` is `root` or lies below it (absolute, normalised paths). */
export function isInside (root: string, child: string): boolean {
  const rel = relative(root, child)
  return rel === '' || (rel !== '..' && !rel.startsWith('..' + sep) && !isAbsolute(rel))
}

/**
 * The real path of `path`, which need not exist yet: its nearest existing ancestor is resolved
 * (symlinks followed) and the rest appended, so containment checks see through links.
 */
export function realPathOf (path: string): string {
  const rest: string[] = []
  let dir = resolve(path)
  for (;;) {
    try {
      return join(realpathSync(dir), ...rest.reverse())
    } catch {
      const up = dirname(dir)
      if (up === dir) return resolve(path)
      rest.push(basename(dir))
      dir = up
    }
  }
}

function realDir (variable: string, path: string, cwd: string): string {
  const absolute = resolve(cwd, path)
  let real: string
  try {
    real = realpathSync(absolute)
  } catch {
    throw new ConfigError(`${variable}=${path}: ${absolute} does not exist; create it or point ${variable} at an existing directory`)
  }
  if (!statSync(real).isDirectory()) throw new ConfigError(`${variable}=${path}: ${real} is not a directory; point ${variable} at a directory`)
  return real
}

/**
 * Create `dir` (with `mode`, e.g. 0700 for a private one) and its missing parents (0755), one at
 * a time. (Node's recursive mkdir spins forever on some paths, `/proc/x` among them; a plain mkdir
 * per level fails at once and says why.)
 */
export function makeDirectory (dir: string, mode = 0o755): void {
  const missing: string[] = []
  let d = resolve(dir)
  while (!existsSync(d)) {
    missing.push(d)
    const up = dirname(d)
    if (up === d) break
    d = up
  }
  for (const m of missing.reverse()) mkdirSync(m, { mode: m === resolve(dir) ? mode : 0o755 })
}

/**
 * The work area a run may use must hold nothing of the server: not its run store, its keys, its
 * `.env` or its own code. A root containing any of them is refused at start.
 */
function checkRootsHoldNothingOfTheServer (roots: string[], serverPaths: Array<{ what: string, path: string }>): void {
  for (const root of roots) {
    for (const { what, path } of serverPaths) {
      if (isInside(root, realPathOf(path))) {
        throw new ConfigError(`ALLOWED_WORKING_DIRS includes ${root}, which contains ${what} (${path}): runs could read it. ` +
          'Point DEFAULT_WORKING_DIR and ALLOWED_WORKING_DIRS at a directory of their own (e.g. ./workspace), or move ' + what + ' out of it')
      }
    }
  }
}

/** What Fastify's `trustProxy` takes. */
export type TrustProxy = boolean | string | ((address: string, hop: number) => boolean)

/**
 * `TRUST_PROXY` as Fastify takes it: `true`/`false`, a comma-separated list of addresses/CIDRs
 * (or `loopback`, `uniquelocal`) of the proxies whose `X-Forwarded-For` is believed, or a hop
 * count: Fastify ignores bare numbers, so `N` becomes "trust the nearest N hops".
 */
export function parseTrustProxy (value: string): TrustProxy {
  const v = value.trim()
  if (v === '' || v === 'false') return false
  if (v === 'true') return true
  if (/^\d+$/.test(v)) {
    const hops = Number(v)
    return (_address: string, hop: number) => hop < hops
  }
  return v
}

/** Turns the validated environment into `Settings`, checking what a schema cannot. */
export function toSettings (raw: RawConfig, serverEnv: Environment, cwd: string): Settings {
  const configuredDefault = unlessEmpty(raw.DEFAULT_WORKING_DIR)
  if (configuredDefault === undefined) {
    // First start: the default work area is made, empty, next to the server (and ignored by git).
    try {
      makeDirectory(resolve(cwd, DEFAULT_WORKSPACE))
    } catch (err) {
      throw new ConfigError(`DEFAULT_WORKING_DIR is unset and the default work area ${resolve(cwd, DEFAULT_WORKSPACE)} could not be created (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); set DEFAULT_WORKING_DIR to an existing directory`)
    }
  }
  const defaultWorkingDir = realDir('DEFAULT_WORKING_DIR', configuredDefault ?? DEFAULT_WORKSPACE, cwd)
  const roots = list(raw.ALLOWED_WORKING_DIRS)
  const allowedRoots = roots.length > 0 ? roots.map(r => realDir('ALLOWED_WORKING_DIRS', r, cwd)) : [defaultWorkingDir]
  if (!allowedRoots.some(root => isInside(root, defaultWorkingDir))) {
    throw new ConfigError(`DEFAULT_WORKING_DIR=${configuredDefault ?? DEFAULT_WORKSPACE} (${defaultWorkingDir}) is not inside ALLOWED_WORKING_DIRS (${allowedRoots.join(', ')}): ` +
      'add it to ALLOWED_WORKING_DIRS or choose a directory inside one of them')
  }
  const dataDir = resolve(cwd, raw.DATA_DIR)
  const defaultKeysFile = resolve(cwd, DEFAULT_KEYS_FILE)
  const apiKeysFile = unlessEmpty(raw.API_KEYS_FILE) !== undefined
    ? resolve(cwd, raw.API_KEYS_FILE!)
    : existsSync(defaultKeysFile) ? defaultKeysFile : undefined
  if (apiKeysFile !== undefined && !existsSync(apiKeysFile)) {
    throw new ConfigError(`API_KEYS_FILE=${raw.API_KEYS_FILE} (${apiKeysFile}) does not exist: create it with "npm run keys -- add NAME --file ${raw.API_KEYS_FILE}", or unset API_KEYS_FILE`)
  }
  checkRootsHoldNothingOfTheServer(allowedRoots, [
    { what: 'DATA_DIR', path: dataDir },
    ...(apiKeysFile !== undefined ? [{ what: 'API_KEYS_FILE', path: apiKeysFile }] : []),
    { what: 'the server\'s .env', path: join(cwd, '.env') },
    { what: 'the server\'s own code', path: PACKAGE_ROOT },
    { what: 'AGENTS_DIR', path: resolve(cwd, raw.AGENTS_DIR) }
  ])
  const modes = list(raw.ALLOWED_PERMISSION_MODES)
  if (modes.length === 0) throw new ConfigError('ALLOWED_PERMISSION_MODES is empty: list at least one mode, e.g. ALLOWED_PERMISSION_MODES=default,acceptEdits,plan,dontAsk')
  for (const m of modes) {
    if (!(PERMISSION_MODES as readonly string[]).includes(m)) {
      throw new ConfigError(`ALLOWED_PERMISSION_MODES=${raw.ALLOWED_PERMISSION_MODES}: unknown permission mode ${m}; use only ${PERMISSION_MODES.join(', ')}`)
    }
  }
  if (!modes.includes(raw.DEFAULT_PERMISSION_MODE)) {
    throw new ConfigError(`DEFAULT_PERMISSION_MODE=${raw.DEFAULT_PERMISSION_MODE} is not in ALLOWED_PERMISSION_MODES (${modes.join(', ')}): add it there or choose one of those`)
  }
  if (list(raw.WEBHOOK_ALLOWED_HOSTS).length > 0 && unlessEmpty(raw.WEBHOOK_SECRET) === undefined) {
    throw new ConfigError(`WEBHOOK_ALLOWED_HOSTS=${raw.WEBHOOK_ALLOWED_HOSTS} is set but WEBHOOK_SECRET is not: webhooks must be signed; set WEBHOOK_SECRET to a long random secret`)
  }
  const defaultTimeoutS = raw.DEFAULT_TIMEOUT ?? Math.min(DEFAULT_TIMEOUT_S, raw.MAX_TIMEOUT)
  if (defaultTimeoutS > raw.MAX_TIMEOUT) {
    throw new ConfigError(`DEFAULT_TIMEOUT (${defaultTimeoutS}) exceeds MAX_TIMEOUT (${raw.MAX_TIMEOUT}): lower DEFAULT_TIMEOUT, or unset it to use MAX_TIMEOUT`)
  }
  return {
    enableAuth: raw.ENABLE_AUTH,
    apiKey: unlessEmpty(raw.CLAUDE_API_KEY),
    host: raw.HOST,
    port: raw.PORT,
    trustProxy: parseTrustProxy(raw.TRUST_PROXY),
    claudePath: unlessEmpty(raw.CLAUDE_CODE_PATH),
    defaultWorkingDir,
    allowedRoots,
    defaultTimeoutS,
    maxTimeoutS: raw.MAX_TIMEOUT,
    defaultPermissionMode: raw.DEFAULT_PERMISSION_MODE,
    allowedPermissionModes: modes as PermissionMode[],
    maxConcurrentRuns: raw.MAX_CONCURRENT_RUNS,
    maxQueuedRuns: raw.MAX_QUEUED_RUNS,
    maxQueuedMessages: raw.MAX_QUEUED_MESSAGES,
    maxQueuedMessageBytes: raw.MAX_QUEUED_MESSAGE_BYTES,
    corsOrigins: list(raw.CORS_ORIGINS),
    logLevel: raw.LOG_LEVEL,
    dataDir,
    databaseUrl: unlessEmpty(raw.DATABASE_URL),
    runLeaseMs: raw.RUN_LEASE_S * 1000,
    maxPromptChars: raw.MAX_PROMPT_CHARS,
    maxBodyBytes: raw.MAX_BODY_BYTES,
    maxUploadBytes: raw.MAX_UPLOAD_BYTES,
    maxArchiveEntries: raw.MAX_ARCHIVE_ENTRIES,
    maxOutputBytes: raw.MAX_OUTPUT_BYTES,
    maxLineBytes: raw.MAX_LINE_BYTES,
    settingSources: raw.CLAUDE_SETTING_SOURCES,
    passEnv: list(raw.PASS_ENV),
    killGraceMs: raw.KILL_GRACE_MS,
    sseKeepAliveMs: raw.SSE_KEEPALIVE_MS,
    approvalTimeoutS: raw.APPROVAL_TIMEOUT_S,
    warmSpares: raw.WARM_SPARES,
    warmMemoryMax: bytesOrZero('WARM_MEMORY_MAX', raw.WARM_MEMORY_MAX),
    sessionKeepAliveS: raw.SESSION_KEEPALIVE_S,
    maxConnections: raw.MAX_CONNECTIONS > 0 ? raw.MAX_CONNECTIONS : defaultMaxConnections(openFileLimit()),
    cliProbeIntervalS: raw.CLI_PROBE_INTERVAL_S,
    shutdownGraceS: raw.SHUTDOWN_GRACE_S,
    retentionDays: raw.RUN_RETENTION_DAYS,
    retentionMaxRuns: raw.RUN_RETENTION_MAX_RUNS,
    apiKeysFile,
    metricsToken: unlessEmpty(raw.METRICS_TOKEN),
    webhookAllowedHosts: list(raw.WEBHOOK_ALLOWED_HOSTS).map(h => h.toLowerCase()),
    webhookSecret: unlessEmpty(raw.WEBHOOK_SECRET),
    webhookMaxAttempts: raw.WEBHOOK_MAX_ATTEMPTS,
    webhookBackoffMs: raw.WEBHOOK_BACKOFF_MS,
    webhookTimeoutMs: raw.WEBHOOK_TIMEOUT_MS,
    isolation: raw.ISOLATION as Settings['isolation'],
    agentUidBase: raw.AGENT_UID_BASE,
    agentsDir: resolve(cwd, raw.AGENTS_DIR),
    agentUidRegistryDir: resolve(cwd, raw.AGENT_UID_REGISTRY_DIR),
    runLimits: runLimitsOf(raw),
    runNetwork: raw.RUN_NETWORK as Settings['runNetwork'],
    recordChanges: raw.RUN_CHANGES === 'on',
    mcpServers: mcpServersOf(unlessEmpty(raw.MCP_CONFIG_FILE), cwd),
    mcpAllowedHosts: list(raw.MCP_ALLOWED_HOSTS).map(h => h.toLowerCase()),
    egressAllow: list(raw.RUN_EGRESS_ALLOW).map(h => h.toLowerCase()),
    serverEnv
  }
}

/** The servers of `MCP_CONFIG_FILE` (none when unset); a file that cannot be read or is wrong names itself. */
function mcpServersOf (file: string | undefined, cwd: string): Record<string, McpServerDef> {
  if (file === undefined) return {}
  const path = resolve(cwd, file)
  let doc: unknown
  try {
    doc = JSON.parse(readFileSync(path, 'utf8'))
  } catch (err) {
    throw new ConfigError(`MCP_CONFIG_FILE=${file}: cannot be read as JSON (${(err as Error).message})`)
  }
  try {
    return parseMcpConfig(doc)
  } catch (err) {
    throw new ConfigError(`MCP_CONFIG_FILE=${file}: ${(err as Error).message}`)
  }
}

/** A size setting where `0` (or `none`) means nothing; a bad value names its variable. */
function bytesOrZero (name: string, v: string): number {
  try {
    return parseBytes(v) ?? 0
  } catch (err) {
    throw new ConfigError(`${name}=${v}: ${(err as Error).message}`)
  }
}

/** `RUN_MEMORY_MAX`, `RUN_PIDS_MAX`, `RUN_CPU_MAX`, `RUN_DISK_MAX` as limits; a bad value names its variable. */
function runLimitsOf (raw: RawConfig): RunLimits {
  const out: RunLimits = {}
  const bytes = (name: string, v: string | undefined): number | undefined => {
    if (v === undefined || v === '') return undefined
    try {
      return parseBytes(v)
    } catch (err) {
      throw new ConfigError(`${name}=${v}: ${(err as Error).message}`)
    }
  }
  const count = (name: string, v: string | undefined, integer: boolean): number | undefined => {
    if (v === undefined || v === '' || /^(none|max|0)$/i.test(v.trim())) return undefined
    const n = Number(v)
    if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) throw new ConfigError(`${name}=${v}: ${integer ? 'a whole number of processes' : 'a number of CPUs, e.g. 1.5'} (or none)`)
    return n
  }
  const memoryMax = bytes('RUN_MEMORY_MAX', raw.RUN_MEMORY_MAX)
  const pidsMax = count('RUN_PIDS_MAX', raw.RUN_PIDS_MAX, true)
  const cpuMax = count('RUN_CPU_MAX', unlessEmpty(raw.RUN_CPU_MAX), false)
  const diskMax = bytes('RUN_DISK_MAX', unlessEmpty(raw.RUN_DISK_MAX))
  if (memoryMax !== undefined) {
    // The CLI alone holds ~250 MB: a limit below that fails every run, and says so only then.
    if (memoryMax < 256 * 1024 * 1024) throw new ConfigError(`RUN_MEMORY_MAX=${raw.RUN_MEMORY_MAX} is below 256M: the Claude Code CLI alone needs about 250 MB`)
    out.memoryMax = memoryMax
  }
  if (pidsMax !== undefined) {
    if (pidsMax < 32) throw new ConfigError(`RUN_PIDS_MAX=${raw.RUN_PIDS_MAX} is below 32: the CLI's own threads need about 20`)
    out.pidsMax = pidsMax
  }
  if (cpuMax !== undefined) out.cpuMax = cpuMax
  if (diskMax !== undefined) out.diskMax = diskMax
  return out
}

/** The process's soft limit on open files (from /proc; 1024 where it cannot be read). */
export function openFileLimit (): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'))
    if (m !== null) return m[1] === 'unlimited' ? 1_048_576 : Number(m[1])
  } catch {}
  return 1024
}

/**
 * Connections the server accepts at once: three quarters of the open-file limit, less 64 kept for
 * runs' pipes and the store, so a flood of clients is refused before the process runs out of
 * descriptors (at 1024: 704). At most 16,384.
 */
export function defaultMaxConnections (fileLimit: number): number {
  return Math.min(16_384, Math.max(16, Math.floor(fileLimit * 0.75) - 64))
}
