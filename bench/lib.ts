/**
 * Shared pieces of the benchmarks: servers started as real processes (as users run them), the
 * bare CLI spawned with the very same flags and environment, and the statistics.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, realpathSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { freePort } from '../test/fixtures/ports.js'

export { freePort }

export const ROOT = fileURLToPath(new URL('..', import.meta.url))
export const FAKE_CLI = join(ROOT, 'test/fixtures/fake-claude.mjs')

/** A throwaway directory, removed by `cleanup()`. */
export function tempDir (): { dir: string, cleanup: () => void } {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'ccapi-bench-')))
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}

/** The environment the CLI gets, whether spawned by the server or directly. */
export function cliEnv (home: string, modelUrl: string): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: home,
    CLAUDE_CONFIG_DIR: join(home, '.claude'),
    ANTHROPIC_BASE_URL: modelUrl,
    ANTHROPIC_API_KEY: 'sk-ant-bench',
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
    DISABLE_AUTOUPDATER: '1',
    CLAUDE_CODE_MAX_RETRIES: '0'
  }
}

export const API_KEY = 'bench-key'
export const headers = { 'x-api-key': API_KEY, 'content-type': 'application/json' }

export interface Proc {
  url: string
  pid: number
  /** Current and peak resident memory of the process, MB (from /proc). */
  rss: () => { now: number, peak: number }
  stop: () => Promise<void>
}

function procRss (pid: number): { now: number, peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (key: string): number => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0)
  return { now: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 }
}

async function waitHttp (url: string, child: ChildProcess, log: () => string): Promise<void> {
  const end = Date.now() + 30_000
  while (Date.now() < end) {
    if (child.exitCode !== null) throw new Error(`process exited early:\n${log()}`)
    try {
      await fetch(url)
      return
    } catch {
      await new Promise(resolve => setTimeout(resolve, 50))
    }
  }
  throw new Error(`no answer from ${url}:\n${log()}`)
}

async function startProcess (args: string[], env: Record<string, string>, probe: string): Promise<Proc> {
  const port = await freePort()
  let out = ''
  const child = spawn(process.execPath, args, { cwd: ROOT, env: { ...env, HOST: '127.0.0.1', PORT: String(port) }, stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout!.on('data', (c: Buffer) => { out = (out + c.toString()).slice(-20_000) })
  child.stderr!.on('data', (c: Buffer) => { out = (out + c.toString()).slice(-20_000) })
  const url = `http://127.0.0.1:${port}`
  await waitHttp(url + probe, child, () => out)
  return {
    url,
    pid: child.pid!,
    rss: () => procRss(child.pid!),
    stop: async () => {
      if (child.exitCode !== null) return
      const exited = new Promise(resolve => child.once('exit', resolve))
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
      await exited
      clearTimeout(timer)
    }
  }
}

/** The server as users run it: `node dist/src/server.js` (built by `npm run bench`). */
export async function startServer (env: Record<string, string>): Promise<Proc> {
  return await startProcess(['dist/src/server.js'], {
    CLAUDE_API_KEY: API_KEY,
    LOG_LEVEL: 'warn',
    SHUTDOWN_GRACE_S: '0',
    ...env
  }, '/health')
}

/** A bare Fastify app with a /health route, in the same process shape as the server. */
export async function startBare (): Promise<Proc> {
  return await startProcess(['dist/bench/bare-server.js'], { LOG_LEVEL: 'warn' }, '/health')
}

/** The CLI's flags for a trivial run, as the server passes them. */
export function cliArgs (sessionId: string): string[] {
  return ['-p', '--output-format=stream-json', '--verbose', '--strict-mcp-config', '--permission-mode=acceptEdits', '--setting-sources=user', `--session-id=${sessionId}`]
}

/** Run the CLI directly; resolves with its stdout. */
export async function runCli (cli: string, args: string[], env: Record<string, string>, cwd: string, prompt: string): Promise<string> {
  const r = await execa(cli, args, { cwd, env, extendEnv: false, input: prompt, detached: true })
  return r.stdout
}

export function quantile (xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!
}
export const median = (xs: number[]): number => quantile(xs, 0.5)
export const round = (x: number, d = 2): number => Math.round(x * 10 ** d) / 10 ** d

/** POST /api/execute and return the parsed result. */
export async function execute (url: string, body: Record<string, unknown>): Promise<any> {
  const res = await fetch(`${url}/api/execute`, { method: 'POST', headers, body: JSON.stringify(body) })
  return await res.json()
}

/** Parse SSE frames from a fetch body, calling `onEvent` as each arrives. */
export async function readSse (res: Response, onEvent: (e: { id: number, event: string, data: string }) => void): Promise<number> {
  let buffer = ''
  let bytes = 0
  const decoder = new TextDecoder()
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    bytes += chunk.length
    buffer += decoder.decode(chunk, { stream: true })
    let end
    while ((end = buffer.indexOf('\n\n')) !== -1) {
      const frame = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      if (frame.startsWith(':')) continue
      let id = 0
      let event = ''
      let data = ''
      for (const line of frame.split('\n')) {
        if (line.startsWith('id: ')) id = Number(line.slice(4))
        else if (line.startsWith('event: ')) event = line.slice(7)
        else if (line.startsWith('data: ')) data += line.slice(6)
      }
      onEvent({ id, event, data })
    }
  }
  return bytes
}
