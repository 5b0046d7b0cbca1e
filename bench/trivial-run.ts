/**
 * Wall time of a trivial run through POST /api/execute versus the same CLI spawned directly with
 * the same flags, against the fake model, interleaved so drift hits both sides alike.
 * Usage: npx tsx bench/trivial-run.ts [runs]
 */
import Fastify from 'fastify'
import { execa } from 'execa'
import { mkdirSync, mkdtempSync, realpathSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import app, { serverOptions } from '../src/app.js'
import { defaultCliPath } from '../src/engine/launch.js'
import { startFakeModel } from '../test/fixtures/fake-model.js'

const runs = Number(process.argv[2] ?? 20)
const base = realpathSync(mkdtempSync(join(tmpdir(), 'ccapi-bench-')))
mkdirSync(join(base, 'runs'))
const model = await startFakeModel()
const env = {
  PATH: process.env.PATH ?? '/usr/bin:/bin',
  HOME: base,
  CLAUDE_CONFIG_DIR: join(base, '.claude'),
  ANTHROPIC_BASE_URL: model.url,
  ANTHROPIC_API_KEY: 'sk-ant-bench',
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
  DISABLE_AUTOUPDATER: '1',
  CLAUDE_CODE_MAX_RETRIES: '0'
}
const server = Fastify(serverOptions('silent'))
await server.register(app, { env: { ...env, CLAUDE_API_KEY: 'bench', DEFAULT_WORKING_DIR: join(base, 'runs'), DATA_DIR: join(base, 'data'), LOG_LEVEL: 'silent' } })
const url = await server.listen({ host: '127.0.0.1', port: 0 })

const direct = async (): Promise<number> => {
  const t0 = performance.now()
  await execa(defaultCliPath(), ['-p', '--output-format=stream-json', '--verbose', '--strict-mcp-config', '--permission-mode=acceptEdits', '--setting-sources=user', `--session-id=${randomUUID()}`], { cwd: join(base, 'runs'), env, extendEnv: false, input: 'say hi', detached: true })
  return performance.now() - t0
}
const viaServer = async (): Promise<number> => {
  const t0 = performance.now()
  const res = await fetch(`${url}/api/execute`, { method: 'POST', headers: { 'x-api-key': 'bench', 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'say hi' }) })
  const body = await res.json() as { success: boolean }
  if (!body.success) throw new Error('run failed: ' + JSON.stringify(body))
  return performance.now() - t0
}
const median = (xs: number[]): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]! }

await direct(); await viaServer() // warm-up
const d: number[] = []
const s: number[] = []
for (let i = 0; i < runs; i++) {
  d.push(await direct())
  s.push(await viaServer())
}
console.log(JSON.stringify({ runs, direct_median_ms: Math.round(median(d)), server_median_ms: Math.round(median(s)), ratio: +(median(s) / median(d)).toFixed(3) }))
await server.close()
await model.close()
rmSync(base, { recursive: true, force: true })
