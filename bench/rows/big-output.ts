import { execute, headers, readSse, round } from '../lib.js'
import { log, quick, rows, server } from '../context.js'

/**
 * Row 6: one run printing a flood of output (fake CLI) through /api/execute/stream, then
 * /api/execute: the server's peak RSS (absolute bound) and the output cap; the idle server's RSS
 * before it, and what that is made of.
 */
export async function bigOutput (): Promise<void> {
  const mb = quick ? 20 : 200
  log(`row 6: ${mb} MB of output through /api/execute/stream and /api/execute`)
  // The server's default MAX_OUTPUT_BYTES.
  const maxOutput = 1024 * 1024
  const srv = await server({}, true)
  let streamed = 0
  let result: any
  let streamResultOk = false
  let rss = { now: 0, peak: 0 }
  let idle = { rss: 0, heapTotal: 0, heapUsed: 0, external: 0 }
  try {
    // The idle server first, settled, and what its memory is made of (its own /metrics).
    await new Promise(resolve => setTimeout(resolve, 1000))
    const metrics = await (await fetch(`${srv.url}/metrics`, { headers })).text()
    const mbOf = (name: string): number => Number(new RegExp(`^ccapi_process_${name} ([0-9.e+]+)`, 'm').exec(metrics)?.[1] ?? 0) / 1048576
    idle = { rss: srv.rss().now, heapTotal: mbOf('nodejs_heap_size_total_bytes'), heapUsed: mbOf('nodejs_heap_size_used_bytes'), external: mbOf('nodejs_external_memory_bytes') }
    const res = await fetch(`${srv.url}/api/execute/stream`, { method: 'POST', headers, body: JSON.stringify({ prompt: `flood ${mb}` }) })
    streamed = await readSse(res, e => {
      if (e.event === 'result') streamResultOk = (JSON.parse(e.data) as { success: boolean }).success
    })
    result = await execute(srv.url, { prompt: `flood ${mb}` })
    rss = srv.rss()
  } finally {
    await srv.stop()
  }
  const capped = Buffer.byteLength(result.output as string) === maxOutput && result.truncated === true
  rows.push({
    row: 6,
    what: `one run printing ${mb} MB (fake CLI) through /api/execute/stream, then /api/execute`,
    compared_with: '—',
    measured: `streamed ${round(streamed / 1e6, 0)} MB; /api/execute output ${round(Buffer.byteLength(result.output as string) / 1048576, 1)} MiB, truncated ${String(result.truncated)}; server peak RSS ${round(rss.peak, 0)} MB; idle ${round(idle.rss, 0)} MB (V8 heap ${round(idle.heapTotal, 0)} MB, ${round(idle.heapUsed, 0)} used; external ${round(idle.external, 0)} MB; the rest, ${round(idle.rss - idle.heapTotal - idle.external, 0)} MB: Node, the modules' code and native memory)`,
    baseline: '—',
    figure: round(rss.peak, 0),
    unit: 'MB peak RSS',
    budget: 'RSS < 150 MB; output capped at MAX_OUTPUT_BYTES with truncated',
    pass: rss.peak < 150 && capped && streamResultOk && result.success === true,
    smoke_pass: rss.peak < 300 && capped && streamResultOk,
    details: { streamed_bytes: streamed, output_bytes: Buffer.byteLength(result.output as string), success: result.success, idle_mb: idle }
  })
}
