import Fastify, { type FastifyInstance } from 'fastify'
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { createHash } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { sweepDeadServers } from '../src/isolation/cgroups.js'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import app, { serverOptions } from '../src/app.js'
import { sha256Hex, type Scope } from '../src/auth/keys.js'
import { startFakeModel, type FakeModel } from './fixtures/fake-model.js'
import { findPostgres } from './fixtures/postgres.js'

export const API_KEY = 'test-key-0123456789'
export const auth = { 'x-api-key': API_KEY }

/** The tap test object, as far as the helpers need it. */
interface T {
  teardown: (fn: () => unknown) => void
}

export interface Sandbox {
  /** Throwaway HOME (CLAUDE_CONFIG_DIR below it): no test touches a real user's sessions. */
  home: string
  /** The allowed root and default working directory. */
  work: string
  /** A directory outside the allowed root. */
  outside: string
}

/**
 * Temp directories for one test file, removed at its end; below `parent` (the temp directory, or
 * e.g. /var/tmp for a sandboxed run, whose own /tmp is a private tmpfs that would hide them).
 */
export function sandbox (t: T, parent = tmpdir()): Sandbox {
  const base = realpathSync(mkdtempSync(join(parent, 'ccapi-test-')))
  const dirs = { home: join(base, 'home'), work: join(base, 'work'), outside: join(base, 'outside') }
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true })
  t.teardown(() => {
    rmSync(base, { recursive: true, force: true })
    pruneUidRegistry()
  })
  return dirs
}

/**
 * Where every test server reserves its agents' uids (`AGENT_UID_REGISTRY_DIR`): one registry for
 * all the test files of a run, so servers of files running side by side never share a uid, and
 * the host's (/var/lib/claude-code-api/agent-uids) is never touched.
 */
export const TEST_UID_REGISTRY = join(tmpdir(), 'ccapi-test-agent-uids')

/** Remove the test registry's reservations for AGENTS_DIRs that are gone (with their sandbox). */
export function pruneUidRegistry (): void {
  let names: string[]
  try {
    names = readdirSync(TEST_UID_REGISTRY)
  } catch {
    return
  }
  for (const name of names.filter(n => /^\d+$/.test(n))) {
    const file = join(TEST_UID_REGISTRY, name)
    try {
      if (!existsSync(readFileSync(file, 'utf8').trim())) rmSync(file, { force: true })
    } catch {
      // Removed by another test file meanwhile.
    }
  }
}

/**
 * Agent identities must reach their homes and work areas: open the sandbox's base and work
 * directory to them (traverse and list), and give the base, where `AGENTS_DIR` goes.
 */
export function openToAgents (box: Sandbox): string {
  const base = join(box.home, '..')
  chmodSync(base, 0o755)
  chmodSync(box.work, 0o755)
  return base
}

/** Start the fake Anthropic API for a test file; closed at its end. */
export async function fakeModel (t: T): Promise<FakeModel> {
  const model = await startFakeModel()
  t.teardown(() => model.close())
  return model
}

/**
 * `TEST_DATABASE_URL=postgres://…/postgres npm test` runs the suite on the PostgreSQL store: each
 * sandbox gets a database of its own (the same one for every server of one sandbox, so restarts
 * find their runs), made with `psql` from the server's binaries.
 */
function storeEnv (box: Sandbox): Record<string, string> {
  const admin = process.env.TEST_DATABASE_URL
  if (admin === undefined || admin === '') return {}
  const name = 't' + createHash('sha256').update(box.home).digest('hex').slice(0, 20)
  const url = new URL(admin)
  const psql = join(findPostgres() ?? '/usr/bin', 'psql')
  const exists = spawnSync(psql, [admin, '-tAc', `SELECT 1 FROM pg_database WHERE datname = '${name}'`], { encoding: 'utf8' })
  if (exists.stdout.trim() !== '1') {
    const made = spawnSync(psql, [admin, '-v', 'ON_ERROR_STOP=1', '-qc', `CREATE DATABASE ${name}`], { encoding: 'utf8' })
    if (made.status !== 0) throw new Error(`TEST_DATABASE_URL: could not create a test database: ${made.stderr}`)
  }
  url.pathname = `/${name}`
  return { DATABASE_URL: url.toString() }
}

/** The suite runs in cluster mode: every server on the PostgreSQL store (`TEST_DATABASE_URL`). */
export const inCluster = (process.env.TEST_DATABASE_URL ?? '') !== ''

/** Why warm-spare tests cannot run: in cluster mode there are no spares. */
export const noWarmSpares: string | false = inCluster ? 'no warm spares in cluster mode (TEST_DATABASE_URL)' : false

/** The environment a test server runs with: the fake model as Claude, the sandbox as home. */
export function testEnv (box: Sandbox, model: FakeModel, extra: Record<string, string> = {}, credentials = true): Record<string, string> {
  return {
    ...storeEnv(box),
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: box.home,
    CLAUDE_CONFIG_DIR: join(box.home, '.claude'),
    ANTHROPIC_BASE_URL: model.url,
    ...(credentials ? { ANTHROPIC_API_KEY: 'sk-ant-test' } : {}),
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
    DISABLE_AUTOUPDATER: '1',
    CLAUDE_CODE_MAX_RETRIES: '0',
    CLAUDE_API_KEY: API_KEY,
    DEFAULT_WORKING_DIR: box.work,
    LOG_LEVEL: 'silent',
    KILL_GRACE_MS: '300',
    DATA_DIR: join(box.home, 'data'),
    SHUTDOWN_GRACE_S: '0',
    // Warm spares cost a CLI each: only the tests of warm start park them.
    WARM_SPARES: '0',
    WARM_MEMORY_MAX: '0',
    // Kept CLIs outlive their runs by design: only the tests of keep-alive keep them.
    SESSION_KEEPALIVE_S: '0',
    // The suite runs as root in CI: agent identities are tested on their own (test/isolation/).
    ISOLATION: 'none',
    // Test servers reserve their agents' uids in a registry of the tests' own, never the host's.
    AGENT_UID_REGISTRY_DIR: TEST_UID_REGISTRY,
    ...extra
  }
}

export interface Built {
  app: FastifyInstance
  box: Sandbox
  model: FakeModel
}

/** A fresh app for one test: fake model, sandbox, and the given extra settings. */
export async function build (t: T, opts: { env?: Record<string, string>, model?: FakeModel, box?: Sandbox, announce?: (s: string) => void, credentials?: boolean } = {}): Promise<Built> {
  const box = opts.box ?? sandbox(t)
  const model = opts.model ?? await fakeModel(t)
  const fastify = Fastify(serverOptions('silent'))
  await fastify.register(app, { env: testEnv(box, model, opts.env, opts.credentials), ...(opts.announce !== undefined ? { announce: opts.announce } : {}) })
  await fastify.ready()
  t.teardown(() => fastify.close())
  return { app: fastify, box, model }
}

/** Listen on an ephemeral loopback port (for streaming and disconnect tests). */
export async function listen (app: FastifyInstance): Promise<string> {
  return await app.listen({ host: '127.0.0.1', port: 0 })
}

/** Pids whose command line contains `needle` (for "no process survives" assertions). */
export function pidsMatching (needle: string): number[] {
  const pids: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8').replaceAll('\0', ' ')
      const state = readFileSync(`/proc/${name}/stat`, 'utf8').split(') ')[1]?.[0]
      if (state !== 'Z' && cmd.includes(needle)) pids.push(Number(name))
    } catch {
      // The process ended while we looked.
    }
  }
  return pids
}

/** Poll `fn` until it returns true or `ms` pass; returns its last answer. */
export async function eventually (fn: () => boolean | Promise<boolean>, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await fn()) return true
    await sleep(50)
  }
  return await fn()
}

/** Pids of live processes whose working directory is `dir` or below it. */
export function pidsInDir (dir: string): number[] {
  const pids: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const cwd = readlinkSync(`/proc/${name}/cwd`)
      const state = readFileSync(`/proc/${name}/stat`, 'utf8').split(') ')[1]?.[0]
      if (state !== 'Z' && (cwd === dir || cwd.startsWith(dir + '/'))) pids.push(Number(name))
    } catch {
      // Gone, or not ours to read.
    }
  }
  return pids
}

export interface SseEvent { id: number, event: string, data: string, at: number }

/** Read an SSE response to its end, stamping each event with its arrival time. */
export async function readSse (res: Response, onEvent?: (e: SseEvent) => void): Promise<{ events: SseEvent[], comments: number }> {
  const events: SseEvent[] = []
  let comments = 0
  let buffer = ''
  const decoder = new TextDecoder()
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true })
    let end
    while ((end = buffer.indexOf('\n\n')) !== -1) {
      const frame = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      const e: SseEvent = { id: 0, event: 'message', data: '', at: Date.now() }
      let isComment = true
      for (const line of frame.split('\n')) {
        if (line.startsWith(':')) continue
        isComment = false
        const i = line.indexOf(':')
        const field = line.slice(0, i)
        const value = line.slice(i + 1).replace(/^ /, '')
        if (field === 'id') e.id = Number(value)
        else if (field === 'event') e.event = value
        else if (field === 'data') e.data += value
      }
      if (isComment) comments++
      else {
        events.push(e)
        onEvent?.(e)
      }
    }
  }
  return { events, comments }
}

export interface ServerProcess {
  base: string
  child: ChildProcessWithoutNullStreams
  output: () => string
  /** Resolves with the exit code. */
  exited: Promise<number | null>
}

const ROOT = fileURLToPath(new URL('..', import.meta.url))
/** tsx's loader, by absolute URL, so the server can start from any working directory. */
const TSX = import.meta.resolve('tsx')

/** Spawn `src/server.ts` as `npm start` would, from `cwd` (default: the repository). */
function spawnServer (env: Record<string, string>, cwd = ROOT): ChildProcessWithoutNullStreams {
  // RUN_AS_UID: start the server itself unprivileged (a test of a server without root).
  // NOFILE: start it with that open-file limit (a test of running out of descriptors).
  const { RUN_AS_UID: uid, NOFILE: nofile, ...rest } = env
  env = rest
  // Under tap, an unprivileged server writes tap's process info into its own HOME: it cannot
  // write the repository's .tap/, and failing to at exit would hold its exit up for seconds.
  if (uid !== undefined && env.HOME !== undefined) env = { _TAPJS_PROCESSINFO_CWD_: env.HOME, ...env }
  const argv = [`--import=${TSX}`, join(ROOT, 'src', 'server.ts')]
  const [command, args] = nofile === undefined
    ? [process.execPath, argv]
    : ['/bin/sh', ['-c', `ulimit -n ${Number(nofile)} && exec "$0" "$@"`, process.execPath, ...argv]]
  return spawn(command, args, {
    cwd,
    ...(uid !== undefined ? { uid: Number(uid), gid: Number(uid) } : {}),
    // A server started as root makes agent identities: their uids go in the tests' registry, never the host's.
    env: { HOST: '127.0.0.1', PORT: '0', AGENT_UID_REGISTRY_DIR: TEST_UID_REGISTRY, ...env, LOG_LEVEL: env.LOG_LEVEL === undefined || env.LOG_LEVEL === 'silent' ? 'info' : env.LOG_LEVEL },
    stdio: ['pipe', 'pipe', 'pipe']
  })
}

/** Start `src/server.ts` as a real process with `env`; killed at the end of the test. */
export async function startServer (t: T, env: Record<string, string>, cwd?: string): Promise<ServerProcess> {
  const child = spawnServer(env, cwd)
  const exited = new Promise<number | null>(resolve => child.once('exit', code => resolve(code)))
  t.teardown(async () => {
    child.kill('SIGKILL')
    // What a killed server leaves of its runs' control groups, the next one would sweep: here, now.
    if (process.getuid?.() === 0) {
      await exited
      await sweepDeadServers().catch(() => {})
    }
  })
  let out = ''
  child.stdout.on('data', (c: Buffer) => { out += c.toString() })
  child.stderr.on('data', (c: Buffer) => { out += c.toString() })
  const ok = await eventually(() => /listening at http:\/\/127\.0\.0\.1:\d+/.test(out) || child.exitCode !== null, 30_000)
  const m = /listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(out)
  if (!ok || m === null) throw new Error('server did not start:\n' + out)
  return { base: m[1]!, child, output: () => out, exited }
}

/** Start a server that is expected not to start: its exit code, stdout and stderr (killed after `ms`). */
export async function serverThatFails (env: Record<string, string>, cwd?: string, ms = 30_000): Promise<{ code: number | null, stdout: string, stderr: string, ms: number }> {
  const started = Date.now()
  const child = spawnServer(env, cwd)
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
  child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), ms)
  const code = await new Promise<number | null>(resolve => child.once('exit', c => resolve(c)))
  clearTimeout(timer)
  return { code, stdout, stderr, ms: Date.now() - started }
}

/** The tool results of a conversation with the fake model, oldest first, as text (the last call carries the whole history). */
export function toolResults (calls: Array<{ body: any }>): string[] {
  return (calls.at(-1)?.body.messages as any[] ?? []).flatMap(m =>
    Array.isArray(m.content) ? m.content.filter((b: any) => b.type === 'tool_result').map((b: any) => typeof b.content === 'string' ? b.content : JSON.stringify(b.content)) : [])
}

/** Write `box.home/keys.json` (readable by all, as agents' servers need) with these named keys; its path. */
export function keysFile (box: Sandbox, keys: Record<string, { key: string, scopes: Scope[], limits?: Record<string, string | number>, mcp_servers?: string[] }>): string {
  const path = join(box.home, 'keys.json')
  const entries = Object.entries(keys).map(([name, k]) => ({ name, key_sha256: sha256Hex(k.key), scopes: k.scopes, ...(k.limits !== undefined ? { limits: k.limits } : {}), ...(k.mcp_servers !== undefined ? { mcp_servers: k.mcp_servers } : {}) }))
  writeFileSync(path, JSON.stringify({ keys: entries }), { mode: 0o644 })
  return path
}
