import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { spawn } from 'node:child_process'
import { defaultCliPath } from '../../src/engine/launch.js'
import { cliArgs, cliEnv, headers, median, readSse, round } from '../lib.js'
import { log, model, quick, rows, runs, server, work } from '../context.js'

/** Resident memory (MB) of every process carrying a warm spare's marker of this server. */
function spareRss (): number {
  let kb = 0
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      if (!readFileSync(`/proc/${name}/environ`, 'utf8').includes('CLAUDE_API_RUN_MARKER=warm-')) continue
      kb += Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${name}/status`, 'utf8'))?.[1] ?? 0)
    } catch {
      // Gone meanwhile.
    }
  }
  return kb / 1024
}

/**
 * Row 9: warm start: a trivial run through /api/execute/stream on a server with a parked spare, to
 * its first `message` event and to `result`, against the same run started cold and the bare CLI;
 * a parked spare's RSS.
 */
export async function warmStart (): Promise<void> {
  const n = quick ? 4 : 15
  log(`row 9: warm start, ${n} interleaved trivial runs: warm, cold, bare CLI`)
  const warm = await server({ WARM_SPARES: '1' })
  const cold = await server()
  const env = cliEnv(join(work, 'home-direct-9'), model.url)
  const cli = defaultCliPath()
  const parked = async (): Promise<boolean> => (await (await fetch(`${warm.url}/health`)).json() as { warm: { parked: number } }).warm.parked === 1
  const waitParked = async (): Promise<void> => {
    const end = Date.now() + 60_000
    while (!(await parked())) {
      if (Date.now() > end) throw new Error('no warm spare parked within 60 s')
      await new Promise(resolve => setTimeout(resolve, 20))
    }
  }
  /** A trivial run through /api/execute/stream: ms to the first `message` event and to `result`. */
  const streamed = async (url: string): Promise<{ first: number, total: number }> => {
    const t0 = performance.now()
    let first = 0
    let total = 0
    const res = await fetch(`${url}/api/execute/stream`, { method: 'POST', headers, body: JSON.stringify({ prompt: 'say hi' }) })
    await readSse(res, e => {
      if (e.event === 'message' && first === 0) first = performance.now() - t0
      if (e.event === 'result') {
        total = performance.now() - t0
        if (JSON.parse(e.data).success !== true) throw new Error('run failed: ' + e.data.slice(0, 300))
      }
    })
    return { first, total }
  }
  /** The bare CLI: ms to its first output line and to its exit. */
  const bare = async (): Promise<{ first: number, total: number }> => {
    const t0 = performance.now()
    let first = 0
    const child = spawn(cli, cliArgs(randomUUID()), { cwd: runs, env, detached: true, stdio: ['pipe', 'pipe', 'ignore'] })
    child.stdout!.once('data', () => { first = performance.now() - t0 })
    child.stdin!.end('say hi')
    await new Promise(resolve => child.once('exit', resolve))
    return { first, total: performance.now() - t0 }
  }
  const w: Array<{ first: number, total: number }> = []
  const c: Array<{ first: number, total: number }> = []
  const b: Array<{ first: number, total: number }> = []
  let rss = 0
  let hits = 0
  try {
    await waitParked()
    rss = spareRss()
    await streamed(cold.url)
    await bare()
    for (let i = 0; i < n; i++) {
      await waitParked()
      // Parking is the spare's own start-up: let it settle before the clock runs.
      await new Promise(resolve => setTimeout(resolve, 200))
      w.push(await streamed(warm.url))
      c.push(await streamed(cold.url))
      b.push(await bare())
    }
    const text = await (await fetch(`${warm.url}/metrics`, { headers })).text()
    hits = Number(/ccapi_warm_claims_total\{outcome="hit"\} (\d+)/.exec(text)?.[1] ?? 0)
  } finally {
    await warm.stop()
    await cold.stop()
  }
  const med = (xs: Array<{ first: number, total: number }>, k: 'first' | 'total'): number => median(xs.map(x => x[k]))
  const firstRatio = med(w, 'first') / med(c, 'first')
  const totalRatio = med(w, 'total') / med(b, 'total')
  rows.push({
    row: 9,
    what: `warm start: POST /api/execute/stream to the first \`message\` event, and to \`result\`, median of ${n} interleaved (warm ${hits} hits); a parked spare's RSS`,
    compared_with: 'the same run started cold; the bare CLI spawned directly (first output line, exit)',
    measured: `warm first ${round(med(w, 'first'), 0)} ms, total ${round(med(w, 'total'), 0)} ms; spare ${round(rss, 0)} MB RSS`,
    baseline: `cold first ${round(med(c, 'first'), 0)} ms, total ${round(med(c, 'total'), 0)} ms; bare CLI first ${round(med(b, 'first'), 0)} ms, total ${round(med(b, 'total'), 0)} ms`,
    figure: round(firstRatio, 3),
    unit: `× first event (warm/cold); ${round(totalRatio, 3)}× total (warm/bare CLI)`,
    budget: 'first event ≤ 0.5× cold; total ≤ 0.8× bare CLI',
    pass: firstRatio <= 0.5 && totalRatio <= 0.8 && hits >= n,
    smoke_pass: firstRatio <= 1 && totalRatio <= 1.5,
    details: { warm_ms: w, cold_ms: c, bare_ms: b, spare_rss_mb: round(rss, 1), hits }
  })
}
