import { Type, type Static } from '@sinclair/typebox'
import { realpathSync } from 'node:fs'
import { resolve } from 'node:path'

/** The permission modes Claude Code accepts for `--permission-mode`. */
export const PERMISSION_MODES = ['default', 'acceptEdits', 'plan', 'dontAsk', 'bypassPermissions'] as const
export type PermissionMode = typeof PERMISSION_MODES[number]

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
  DEFAULT_TIMEOUT: Type.Integer({ default: 300, minimum: 1 }),
  MAX_TIMEOUT: Type.Integer({ default: 3600, minimum: 1 }),
  DEFAULT_PERMISSION_MODE: Type.Union(PERMISSION_MODES.map(m => Type.Literal(m)), { default: 'acceptEdits' }),
  ALLOWED_PERMISSION_MODES: Type.String({ default: 'default,acceptEdits,plan,dontAsk' }),
  MAX_CONCURRENT_RUNS: Type.Integer({ default: 4, minimum: 1 }),
  MAX_QUEUED_RUNS: Type.Integer({ default: 32, minimum: 0 }),
  CORS_ORIGINS: Type.String({ default: '' }),
  LOG_LEVEL: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map(l => Type.Literal(l)), { default: 'info' }),
  DATA_DIR: Type.String({ default: './data' }),
  MAX_PROMPT_CHARS: Type.Integer({ default: 200_000, minimum: 1 }),
  MAX_BODY_BYTES: Type.Integer({ default: 4 * 1024 * 1024, minimum: 1024 }),
  // 1 MiB: several times what a model can answer in one response (64k output tokens ≈ 256 KB).
  MAX_OUTPUT_BYTES: Type.Integer({ default: 1024 * 1024, minimum: 1024 }),
  MAX_LINE_BYTES: Type.Integer({ default: 16 * 1024 * 1024, minimum: 1024 }),
  CLAUDE_SETTING_SOURCES: Type.String({ default: 'user' }),
  PASS_ENV: Type.String({ default: '' }),
  KILL_GRACE_MS: Type.Integer({ default: 3000, minimum: 0 }),
  SSE_KEEPALIVE_MS: Type.Integer({ default: 15_000, minimum: 100 }),
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
  WEBHOOK_TIMEOUT_MS: Type.Integer({ default: 10_000, minimum: 100 })
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
  corsOrigins: string[]
  logLevel: string
  dataDir: string
  maxPromptChars: number
  maxBodyBytes: number
  maxOutputBytes: number
  maxLineBytes: number
  settingSources: string
  passEnv: string[]
  killGraceMs: number
  sseKeepAliveMs: number
  cliProbeIntervalS: number
  shutdownGraceS: number
  retentionDays: number
  retentionMaxRuns: number
  apiKeysFile: string | undefined
  metricsToken: string | undefined
  webhookAllowedHosts: string[]
  webhookSecret: string | undefined
  webhookMaxAttempts: number
  webhookBackoffMs: number
  webhookTimeoutMs: number
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

function realDir (path: string, what: string, cwd: string): string {
  try {
    return realpathSync(resolve(cwd, path))
  } catch {
    throw new ConfigError(`${what} ${path} does not exist`)
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
  const defaultWorkingDir = realDir(unlessEmpty(raw.DEFAULT_WORKING_DIR) ?? cwd, 'DEFAULT_WORKING_DIR', cwd)
  const roots = list(raw.ALLOWED_WORKING_DIRS)
  const allowedRoots = roots.length > 0 ? roots.map(r => realDir(r, 'ALLOWED_WORKING_DIRS entry', cwd)) : [defaultWorkingDir]
  const modes = list(raw.ALLOWED_PERMISSION_MODES)
  for (const m of modes) {
    if (!(PERMISSION_MODES as readonly string[]).includes(m)) {
      throw new ConfigError(`ALLOWED_PERMISSION_MODES: unknown permission mode ${m} (known: ${PERMISSION_MODES.join(', ')})`)
    }
  }
  if (!modes.includes(raw.DEFAULT_PERMISSION_MODE)) {
    throw new ConfigError(`DEFAULT_PERMISSION_MODE ${raw.DEFAULT_PERMISSION_MODE} is not in ALLOWED_PERMISSION_MODES`)
  }
  if (list(raw.WEBHOOK_ALLOWED_HOSTS).length > 0 && unlessEmpty(raw.WEBHOOK_SECRET) === undefined) {
    throw new ConfigError('WEBHOOK_ALLOWED_HOSTS is set but WEBHOOK_SECRET is not: webhooks must be signed')
  }
  if (raw.DEFAULT_TIMEOUT > raw.MAX_TIMEOUT) {
    throw new ConfigError(`DEFAULT_TIMEOUT (${raw.DEFAULT_TIMEOUT}) exceeds MAX_TIMEOUT (${raw.MAX_TIMEOUT})`)
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
    defaultTimeoutS: raw.DEFAULT_TIMEOUT,
    maxTimeoutS: raw.MAX_TIMEOUT,
    defaultPermissionMode: raw.DEFAULT_PERMISSION_MODE,
    allowedPermissionModes: modes as PermissionMode[],
    maxConcurrentRuns: raw.MAX_CONCURRENT_RUNS,
    maxQueuedRuns: raw.MAX_QUEUED_RUNS,
    corsOrigins: list(raw.CORS_ORIGINS),
    logLevel: raw.LOG_LEVEL,
    dataDir: resolve(cwd, raw.DATA_DIR),
    maxPromptChars: raw.MAX_PROMPT_CHARS,
    maxBodyBytes: raw.MAX_BODY_BYTES,
    maxOutputBytes: raw.MAX_OUTPUT_BYTES,
    maxLineBytes: raw.MAX_LINE_BYTES,
    settingSources: raw.CLAUDE_SETTING_SOURCES,
    passEnv: list(raw.PASS_ENV),
    killGraceMs: raw.KILL_GRACE_MS,
    sseKeepAliveMs: raw.SSE_KEEPALIVE_MS,
    cliProbeIntervalS: raw.CLI_PROBE_INTERVAL_S,
    shutdownGraceS: raw.SHUTDOWN_GRACE_S,
    retentionDays: raw.RUN_RETENTION_DAYS,
    retentionMaxRuns: raw.RUN_RETENTION_MAX_RUNS,
    apiKeysFile: unlessEmpty(raw.API_KEYS_FILE) === undefined ? undefined : resolve(cwd, raw.API_KEYS_FILE!),
    metricsToken: unlessEmpty(raw.METRICS_TOKEN),
    webhookAllowedHosts: list(raw.WEBHOOK_ALLOWED_HOSTS).map(h => h.toLowerCase()),
    webhookSecret: unlessEmpty(raw.WEBHOOK_SECRET),
    webhookMaxAttempts: raw.WEBHOOK_MAX_ATTEMPTS,
    webhookBackoffMs: raw.WEBHOOK_BACKOFF_MS,
    webhookTimeoutMs: raw.WEBHOOK_TIMEOUT_MS,
    serverEnv
  }
}
