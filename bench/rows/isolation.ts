import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { CredentialBroker } from '../../src/isolation/broker.js'
import { cliEnv, execute, median, quantile, round, startServer, type Proc } from '../lib.js'
import { eventLatencies, stampingUpstream } from '../stamped-upstream.js'
import { log, model, quick, rows } from '../context.js'

/**
 * Row 8: a trivial run at each isolation level the machine allows, against level `none`; the
 * credential broker's added latency per streamed model event, against reading the stream directly.
 */
export async function isolation (): Promise<void> {
  const n = quick ? 3 : 10
  const events = quick ? 100 : 300
  log(`row 8: isolation levels (${n} trivial runs each) and the credential broker (${events} streamed events)`)
  // The broker, in process: the same stamped stream read directly and through the broker.
  const upstream = await stampingUpstream(events, 2)
  const broker = new CredentialBroker({ kind: 'api_key', value: 'sk-ant-bench' }, upstream.url)
  await broker.start()
  const direct: number[] = []
  const via: number[] = []
  try {
    const token = broker.issue('bench').env.ANTHROPIC_API_KEY!
    for (let rep = 0; rep < 3; rep++) {
      direct.push(...await eventLatencies(upstream.url, 'sk-ant-bench'))
      via.push(...await eventLatencies(broker.address, token))
    }
  } finally {
    await broker.close()
    await upstream.close()
  }
  const added = { p50: quantile(via, 0.5) - quantile(direct, 0.5), p99: quantile(via, 0.99) - quantile(direct, 0.99) }
  // Trivial runs at each level the machine allows, against `none`.
  const levels: Record<string, number> = {}
  const root = process.getuid?.() === 0
  const { dir: base, cleanup: done } = (() => {
    const dir = mkdtempSync('/var/tmp/ccapi-bench-iso-')
    return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) }
  })()
  try {
    chmodSync(base, 0o755)
    // The smoke test judges the highest level against none only: it leaves uid out.
    for (const level of root ? (quick ? ['none', 'sandbox'] : ['none', 'uid', 'sandbox']) : ['none']) {
      const home = join(base, `home-${level}`)
      const workDir = join(base, `work-${level}`)
      mkdirSync(home, { recursive: true })
      mkdirSync(workDir, { recursive: true, mode: 0o755 })
      chmodSync(workDir, 0o755)
      let srv: Proc
      try {
        srv = await startServer({ ...cliEnv(home, model.url), DEFAULT_WORKING_DIR: workDir, DATA_DIR: join(home, 'data'), AGENTS_DIR: join(base, `agents-${level}`), ISOLATION: level, AGENT_UID_REGISTRY_DIR: join(base, 'agent-uids') })
      } catch {
        continue
      }
      try {
        await execute(srv.url, { prompt: 'say hi' })
        const times: number[] = []
        for (let i = 0; i < n; i++) {
          const t0 = performance.now()
          const r = await execute(srv.url, { prompt: 'say hi' })
          times.push(performance.now() - t0)
          if (r.success !== true) throw new Error(`run at ${level} failed: ${JSON.stringify(r).slice(0, 300)}`)
        }
        levels[level] = median(times)
      } finally {
        await srv.stop()
      }
    }
  } finally {
    done()
  }
  const none = levels.none ?? NaN
  const highest = levels.sandbox !== undefined ? 'sandbox' : levels.uid !== undefined ? 'uid' : 'none'
  const ratio = levels[highest]! / none
  const p99 = added.p99
  rows.push({
    row: 8,
    what: `isolation: trivial run (median of ${n}) at each level; the credential broker's added latency per streamed model event (${events} events × 3)`,
    compared_with: 'level none; the same stream read from the model directly',
    measured: Object.entries(levels).map(([l, ms]) => `${l} ${round(ms, 0)} ms`).join(', ') + `; broker +${round(added.p50, 2)} ms p50, +${round(p99, 2)} ms p99 per event (direct p99 ${round(quantile(direct, 0.99), 2)} ms)`,
    baseline: `none ${round(none, 0)} ms`,
    figure: round(ratio, 3),
    unit: `× (${highest} vs none)`,
    budget: 'highest level ≤ 1.10× of none; broker ≤ 1 ms p99 per event',
    pass: ratio <= 1.10 && p99 <= 1,
    smoke_pass: ratio <= 2 && p99 <= 20,
    details: { levels_ms: levels, broker_added_ms_p50: added.p50, broker_added_ms_p99: p99, direct_ms_p99: quantile(direct, 0.99), via_ms_p99: quantile(via, 0.99) }
  })
}
