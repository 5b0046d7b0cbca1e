import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { defaultCliPath } from '../../src/engine/launch.js'
import { cliArgs, cliEnv, execute, median, round, runCli } from '../lib.js'
import { log, model, quick, rows, runs, server, work } from '../context.js'

/**
 * Row 3: concurrent runs through POST /api/execute (total wall time and errors) against as many
 * CLIs spawned directly at once.
 */
export async function concurrency (): Promise<void> {
  const n = quick ? 4 : 16
  // One sample of 4 runs on a busy CI machine swings by half: the smoke test takes the median of 3.
  const reps = 3
  log(`row 3: ${n} concurrent runs × ${reps}`)
  const srv = await server({ MAX_CONCURRENT_RUNS: String(n), MAX_QUEUED_RUNS: String(n) })
  const env = cliEnv(join(work, 'home-direct'), model.url)
  const cli = defaultCliPath()
  const direct: number[] = []
  const viaServer: number[] = []
  let errors = 0
  try {
    for (let r = 0; r < reps; r++) {
      let t0 = performance.now()
      await Promise.all(Array.from({ length: n }, async () => await runCli(cli, cliArgs(randomUUID()), env, runs, 'say hi')))
      direct.push(performance.now() - t0)
      t0 = performance.now()
      const results = await Promise.all(Array.from({ length: n }, async () => await execute(srv.url, { prompt: 'say hi' })))
      viaServer.push(performance.now() - t0)
      errors += results.filter(x => x.success !== true).length
    }
  } finally {
    await srv.stop()
  }
  const ratio = median(viaServer) / median(direct)
  rows.push({
    row: 3,
    what: `${n} concurrent runs, total wall time (median of ${reps}), errors`,
    compared_with: `${n} CLIs spawned directly at once`,
    measured: `${round(median(viaServer), 0)} ms, ${errors} errors`,
    baseline: `${round(median(direct), 0)} ms`,
    figure: round(ratio, 3),
    unit: '×',
    budget: '≤ 1.05×, 0 errors',
    pass: ratio <= 1.05 && errors === 0,
    smoke_pass: ratio <= 1.5 && errors === 0,
    details: { server_ms: viaServer.map(x => round(x, 0)), direct_ms: direct.map(x => round(x, 0)), errors }
  })
}
