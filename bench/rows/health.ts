import autocannon from 'autocannon'
import { round, startBare } from '../lib.js'
import { log, quick, rows, server } from '../context.js'

/**
 * Row 4: GET /health requests/s and p99 latency under autocannon, against a bare Fastify route in
 * the same process shape.
 */
export async function health (): Promise<void> {
  // Interleaved rounds, the median of each: a burst of other load on a shared machine hits both.
  const rounds = quick ? 3 : 5
  const duration = quick ? 1 : 2
  log(`row 4: GET /health, ${rounds} interleaved rounds of ${duration} s each, server vs bare Fastify`)
  const load = async (url: string): Promise<autocannon.Result> =>
    await autocannon({ url: `${url}/health`, connections: 10, duration, pipelining: 1 })
  const srv = await server()
  const bare = await startBare()
  const oursAll: autocannon.Result[] = []
  const baseAll: autocannon.Result[] = []
  try {
    await autocannon({ url: `${srv.url}/health`, connections: 10, duration: 1 })
    await autocannon({ url: `${bare.url}/health`, connections: 10, duration: 1 })
    for (let i = 0; i < rounds; i++) {
      baseAll.push(await load(bare.url))
      oursAll.push(await load(srv.url))
    }
  } finally {
    await srv.stop()
    await bare.stop()
  }
  const byRps = (xs: autocannon.Result[]): autocannon.Result => [...xs].sort((a, b) => a.requests.average - b.requests.average)[Math.floor(xs.length / 2)]!
  const ours = byRps(oursAll)
  const base = byRps(baseAll)
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
    pass: ratio >= 0.8 && oursAll.every(r => r.non2xx === 0 && r.errors === 0),
    smoke_pass: ratio >= 0.4 && oursAll.every(r => r.errors === 0),
    details: { errors: oursAll.reduce((a, r) => a + r.errors, 0), non2xx: oursAll.reduce((a, r) => a + r.non2xx, 0), ours_rps: oursAll.map(r => round(r.requests.average, 0)), bare_rps: baseAll.map(r => round(r.requests.average, 0)) }
  })
}
