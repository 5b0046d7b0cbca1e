import { spawn } from 'node:child_process'
import { FAKE_CLI, headers, quantile, readSse, round } from '../lib.js'
import { log, quick, rows, server } from '../context.js'

/**
 * Row 2: the delay from the CLI printing a line to an SSE client of /api/execute/stream receiving
 * it, against reading the CLI's stdout directly (p99, fake CLI).
 */
export async function liveDelay (): Promise<void> {
  const lines = quick ? 300 : 1000
  const gap = 2
  log(`row 2: SSE delay over ${lines} lines`)
  const prompt = `ticks ${lines} ${gap}`
  const delayOf = (line: string): number | null => {
    try {
      const o = JSON.parse(line) as { t?: string }
      return o.t === undefined ? null : Number(process.hrtime.bigint() - BigInt(o.t)) / 1e6
    } catch {
      return null
    }
  }
  // Direct: read the CLI's stdout ourselves.
  const direct: number[] = []
  await new Promise<void>((resolve, reject) => {
    const child = spawn(FAKE_CLI, ['-p', '--output-format=stream-json', '--verbose'], { stdio: ['pipe', 'pipe', 'ignore'] })
    let buf = ''
    child.stdout.on('data', (c: Buffer) => {
      buf += c.toString()
      let nl
      while ((nl = buf.indexOf('\n')) !== -1) {
        const d = delayOf(buf.slice(0, nl))
        if (d !== null) direct.push(d)
        buf = buf.slice(nl + 1)
      }
    })
    child.on('exit', () => resolve())
    child.on('error', reject)
    child.stdin.end(prompt)
  })
  // Through the server: an SSE client on /api/execute/stream.
  const srv = await server({}, true)
  const viaServer: number[] = []
  try {
    const res = await fetch(`${srv.url}/api/execute/stream`, { method: 'POST', headers, body: JSON.stringify({ prompt }) })
    await readSse(res, e => {
      if (e.event !== 'message') return
      const d = delayOf(e.data)
      if (d !== null) viaServer.push(d)
    })
  } finally {
    await srv.stop()
  }
  const added = quantile(viaServer, 0.99) - quantile(direct, 0.99)
  rows.push({
    row: 2,
    what: `delay from the CLI printing a line to an SSE client receiving it, ${viaServer.length} lines`,
    compared_with: 'reading the CLI\'s stdout directly',
    measured: `p50 ${round(quantile(viaServer, 0.5))} ms, p99 ${round(quantile(viaServer, 0.99))} ms`,
    baseline: `p50 ${round(quantile(direct, 0.5))} ms, p99 ${round(quantile(direct, 0.99))} ms`,
    figure: round(added),
    unit: 'ms added at p99',
    budget: '≤ 2 ms added at p99',
    pass: added <= 2 && viaServer.length === lines,
    smoke_pass: added <= 20 && viaServer.length === lines,
    details: { lines_received: viaServer.length, lines_direct: direct.length, worst: viaServer.map((d, i) => [i, round(d)]).sort((a, b) => b[1]! - a[1]!).slice(0, 15) }
  })
}
