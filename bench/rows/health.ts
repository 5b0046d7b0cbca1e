import autocannon from 'autocannon'
import { round, startBare } from '../lib.js'
import { log, quick, rows, server } from '../context.js'

/**
 * Row 4: GET /health requests/s and p99 latency under autocannon, against a bare Fastify route in
 * the same process shape.
 */
export async function health (): Promise<void> {
  const duration = quick ? 3 : 10
  log(`row 4: GET /health for ${duration} s each, server vs bare Fastify`)
  const load = async (url: string): Promise<autocannon.Result> =>
    await autocannon({ url: `${url}/health`, connections: 10, duration, pipelining: 1 })
  const srv = await server()
  const bare = await startBare()
  let ours: autocannon.Result
  let base: autocannon.Result
  try {
    await autocannon({ url: `${srv.url}/health`, connections: 10, duration: 1 })
    await autocannon({ url: `${bare.url}/health`, connections: 10, duration: 1 })
    base = await load(bare.url)
    ours = await load(srv.url)
  } finally {
    await srv.stop()
    await bare.stop()
  }
  const ratio = ours.requests.average / base.requests.average
  rows.push({
    row: 4,
    what: 'GET /health requests/s and p99 latency (autocannon, 10 connections)',
    compared_with: 'a bare Fastify route in the same process shape',
    measured: `${round(ours.requests.average, 0)} req/s, p99 ${ours.latency.p99} ms`,
    baseline: `${round(base.requests.average, 0)} req/s, p99 ${base.latency.p99} ms`,
    figure: round(ratio, 3),
    unit: '× throughput',
    budget: '≥ 0.8×',
    pass: ratio >= 0.8 && ours.non2xx === 0 && ours.errors === 0,
    smoke_pass: ratio >= 0.4 && ours.errors === 0,
    details: { errors: ours.errors, non2xx: ours.non2xx }
  })
}
