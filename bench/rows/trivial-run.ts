import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { defaultCliPath } from '../../src/engine/launch.js'
import { cliArgs, cliEnv, execute, median, round, runCli } from '../lib.js'
import { log, model, quick, rows, runs, server, work } from '../context.js'

/**
 * Row 1: a trivial run through POST /api/execute, sequentially, against the same CLI spawned
 * directly with the same flags (median wall time).
 */
export async function trivialRun (): Promise<void> {
  const n = quick ? 3 : 20
  log(`row 1: ${n} sequential trivial runs, server vs bare CLI`)
  const srv = await server()
  const env = cliEnv(join(work, 'home-direct'), model.url)
  const cli = defaultCliPath()
  const direct: number[] = []
  const viaServer: number[] = []
  try {
    await runCli(cli, cliArgs(randomUUID()), env, runs, 'say hi')
    await execute(srv.url, { prompt: 'say hi' })
    for (let i = 0; i < n; i++) {
      let t0 = performance.now()
      await runCli(cli, cliArgs(randomUUID()), env, runs, 'say hi')
      direct.push(performance.now() - t0)
      t0 = performance.now()
      const r = await execute(srv.url, { prompt: 'say hi' })
      viaServer.push(performance.now() - t0)
      if (r.success !== true) throw new Error('run failed: ' + JSON.stringify(r))
    }
  } finally {
    await srv.stop()
  }
  const ratio = median(viaServer) / median(direct)
  rows.push({
    row: 1,
    what: `trivial run through POST /api/execute, ${n} sequential, median`,
    compared_with: 'the same CLI spawned directly with the same flags',
    measured: `${round(median(viaServer), 0)} ms`,
    baseline: `${round(median(direct), 0)} ms`,
    figure: round(ratio, 3),
    unit: '×',
    budget: '≤ 1.03×',
    pass: ratio <= 1.03,
    smoke_pass: ratio <= 1.5,
    details: { server_ms: viaServer.map(x => round(x, 1)), direct_ms: direct.map(x => round(x, 1)) }
  })
}
