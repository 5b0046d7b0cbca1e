/**
 * Event-log write throughput for one chatty run (events/s, end to end: CLI stdout → parser →
 * store → SQLite) and replay time of a finished 10,000-event run over SSE.
 * Usage: npx tsx bench/event-log.ts [lines]
 */
import Fastify from 'fastify'
import { mkdirSync, mkdtempSync, realpathSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import app, { serverOptions } from '../src/app.js'

const lines = Number(process.argv[2] ?? 10_000)
const base = realpathSync(mkdtempSync(join(tmpdir(), 'ccapi-bench-')))
mkdirSync(join(base, 'runs'))
const server = Fastify(serverOptions('silent'))
await server.register(app, {
  env: {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: base,
    CLAUDE_API_KEY: 'bench',
    DEFAULT_WORKING_DIR: join(base, 'runs'),
    DATA_DIR: join(base, 'data'),
    CLAUDE_CODE_PATH: fileURLToPath(new URL('../test/fixtures/fake-claude.mjs', import.meta.url)),
    LOG_LEVEL: 'silent'
  }
})
const url = await server.listen({ host: '127.0.0.1', port: 0 })
const headers = { 'x-api-key': 'bench', 'content-type': 'application/json' }

const t0 = performance.now()
const run = await (await fetch(`${url}/api/runs`, { method: 'POST', headers, body: JSON.stringify({ prompt: `chatty ${lines}` }) })).json() as { id: string }
let status = 'queued'
let view: any
while (status === 'queued' || status === 'running') {
  await new Promise(resolve => setTimeout(resolve, 20))
  view = await (await fetch(`${url}/api/runs/${run.id}`, { headers })).json()
  status = view.status
}
const writeMs = new Date(view.ended_at).getTime() - new Date(view.started_at).getTime()

const r0 = performance.now()
const res = await fetch(`${url}/api/runs/${run.id}/events`, { headers })
const text = await res.text()
const replayMs = performance.now() - r0
const events = (text.match(/^id: /gm) ?? []).length

console.log(JSON.stringify({
  cli_lines: lines,
  events_logged: events,
  run_ms: Math.round(writeMs),
  events_per_s: Math.round(events / (writeMs / 1000)),
  replay_events: events,
  replay_ms: Math.round(replayMs),
  replay_mb: +(text.length / 1e6).toFixed(1),
  total_ms: Math.round(performance.now() - t0)
}))
await server.close()
rmSync(base, { recursive: true, force: true })
