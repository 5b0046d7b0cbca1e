import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import { connect } from 'node:net'
import { CredentialBroker } from '../../src/isolation/broker.js'
import { execute, freePort, median, quantile, round, tempDir, type Proc } from '../lib.js'
import { eventLatencies, stampingUpstream } from '../stamped-upstream.js'
import { agentServer, log, quick, rows } from '../context.js'

/** Where a sandboxed run's relay to the broker comes from (the server looks for it there too). */
const SOCAT = '/usr/bin/socat'

/** Resolves once `port` on loopback accepts connections; throws if `child` exits first or after 10 s. */
async function waitPort (port: number, child: ChildProcess, log: () => string): Promise<void> {
  const end = Date.now() + 10_000
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`socat exited early: ${log()}`)
    const ok = await new Promise<boolean>(resolve => {
      const s = connect(port, '127.0.0.1')
      s.once('connect', () => { s.destroy(); resolve(true) })
      s.once('error', () => resolve(false))
    })
    if (ok) return
    if (Date.now() > end) throw new Error(`socat did not listen on ${port} within 10 s: ${log()}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

interface LimitsHealth {
  isolation: { level: string, network: string, network_error?: string }
  limits: { enforced: string, memory_max: number | null, pids_max: number | null, cpu_max: number | null, disk_max: number | null, disk_enforced: string }
}

/**
 * Row 11: a trivial run at sandbox with the default limits and a network of its own, against the
 * same with neither (interleaved); the credential broker's added latency per streamed event through
 * socat and the run's own socket, against the stream read directly (and the broker over TCP).
 */
export async function limits (): Promise<void> {
  const n = quick ? 3 : 10
  const events = quick ? 100 : 300
  log(`row 11: limits and a network of the run's own (${n} interleaved trivial runs at sandbox), the broker through a run's socket (${events} streamed events)`)
  // The broker, in process: the same stamped stream read directly, through the broker over TCP,
  // and the way a sandboxed run reaches it: socat on a loopback port, relaying to the run's own socket.
  const upstream = await stampingUpstream(events, 2)
  const broker = new CredentialBroker({ kind: 'api_key', value: 'sk-ant-bench' }, upstream.url)
  await broker.start()
  const { dir: sockets, cleanup: socketsDone } = tempDir()
  const direct: number[] = []
  const tcp: number[] = []
  const viaSocket: number[] = []
  let socketSkipped = ''
  let relay: ChildProcess | undefined
  try {
    const a = broker.issue('bench-direct').env.ANTHROPIC_API_KEY!
    const b = broker.issue('bench-socket')
    b.listen(join(sockets, 'broker.sock'))
    let relayUrl = ''
    if (!existsSync(SOCAT)) {
      socketSkipped = `socket path skipped: no ${SOCAT}`
    } else {
      const port = await freePort()
      let out = ''
      // The relay a sandboxed run starts (src/isolation/run-network.ts), in a process group of its
      // own: the children it forks per connection end with it.
      relay = spawn(SOCAT, [`TCP4-LISTEN:${port},bind=127.0.0.1,fork,reuseaddr,backlog=1024`, `UNIX-CONNECT:${join(sockets, 'broker.sock')}`], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] })
      relay.stderr!.on('data', (c: Buffer) => { out = (out + c.toString()).slice(-2000) })
      await waitPort(port, relay, () => out)
      relayUrl = `http://127.0.0.1:${port}`
    }
    for (let rep = 0; rep < 3; rep++) {
      direct.push(...await eventLatencies(upstream.url, 'sk-ant-bench'))
      tcp.push(...await eventLatencies(broker.address, a))
      if (relayUrl !== '') viaSocket.push(...await eventLatencies(relayUrl, b.env.ANTHROPIC_API_KEY!))
    }
    if (relayUrl !== '' && viaSocket.length !== direct.length) throw new Error(`the socket path delivered ${viaSocket.length} of ${direct.length} events`)
  } finally {
    if (relay !== undefined && relay.exitCode === null && relay.signalCode === null) {
      const exited = new Promise(resolve => relay!.once('exit', resolve))
      try {
        process.kill(-relay.pid!, 'SIGTERM')
      } catch {
        // Gone meanwhile.
      }
      await exited
    }
    await broker.close()
    await upstream.close()
    socketsDone()
  }
  const added = (xs: number[], ys: number[]): { p50: number, p99: number } => ({ p50: quantile(xs, 0.5) - quantile(ys, 0.5), p99: quantile(xs, 0.99) - quantile(ys, 0.99) })
  const overDirect = viaSocket.length > 0 ? added(viaSocket, direct) : null
  const overTcp = viaSocket.length > 0 ? added(viaSocket, tcp) : null
  const tcpOverDirect = added(tcp, direct)
  // Trivial runs at sandbox: the defaults (limits, RUN_NETWORK=egress) against neither, interleaved.
  const withBoth: number[] = []
  const withNeither: number[] = []
  const health: Record<string, LimitsHealth> = {}
  let runsSkipped = ''
  if (process.getuid?.() !== 0) {
    runsSkipped = 'trivial runs skipped: ISOLATION=sandbox needs root'
  } else {
    const base = mkdtempSync('/var/tmp/ccapi-bench-limits-')
    let srvA: Proc | undefined
    let srvB: Proc | undefined
    try {
      chmodSync(base, 0o755)
      // No warm spares: a run's group and network are made at its launch, on the clock.
      const start = async (name: string, extra: Record<string, string>): Promise<Proc> => await agentServer(base, name, { ISOLATION: 'sandbox', WARM_SPARES: '0', ...extra })
      try {
        srvA = await start('both', {})
        srvB = await start('neither', { RUN_NETWORK: 'host', RUN_MEMORY_MAX: 'none', RUN_PIDS_MAX: 'none' })
      } catch (err) {
        runsSkipped = `trivial runs skipped: no sandbox here (${(err as Error).message.split('\n')[0]!})`
      }
      if (srvA !== undefined && srvB !== undefined) {
        const servers: Array<[string, Proc, number[]]> = [['both', srvA, withBoth], ['neither', srvB, withNeither]]
        for (const [name, srv] of servers) {
          health[name] = await (await fetch(`${srv.url}/health`)).json() as LimitsHealth
          await execute(srv.url, { prompt: 'say hi' })
        }
        for (let i = 0; i < n; i++) {
          for (const [name, srv, times] of servers) {
            const t0 = performance.now()
            const r = await execute(srv.url, { prompt: 'say hi' })
            times.push(performance.now() - t0)
            if (r.success !== true) throw new Error(`run with ${name} failed: ${JSON.stringify(r).slice(0, 300)}`)
          }
        }
      }
    } finally {
      await srvA?.stop()
      await srvB?.stop()
      rmSync(base, { recursive: true, force: true })
    }
  }
  const ran = withBoth.length > 0
  const ratio = ran ? median(withBoth) / median(withNeither) : NaN
  const p99 = overDirect?.p99 ?? NaN
  const state = (h: LimitsHealth | undefined): string => h === undefined ? '' : ` (enforced ${h.limits.enforced}, network ${h.isolation.network}${h.isolation.network_error !== undefined ? `: ${h.isolation.network_error}` : ''})`
  const signed = (x: number): string => `${x < 0 ? '−' : '+'}${round(Math.abs(x), 2)}`
  const brokerText = overDirect !== null
    ? `socket path ${signed(overDirect.p50)} ms p50, ${signed(overDirect.p99)} ms p99 per event (TCP broker ${signed(tcpOverDirect.p50)} ms p50, ${signed(tcpOverDirect.p99)} ms p99)`
    : `${socketSkipped}; TCP broker ${signed(tcpOverDirect.p50)} ms p50, ${signed(tcpOverDirect.p99)} ms p99 per event`
  // What the machine cannot do is said, and judged on what was measured (as row 8 does).
  const ratioOk = (budget: number): boolean => !ran || ratio <= budget
  const p99Ok = (budget: number): boolean => overDirect === null || p99 <= budget
  rows.push({
    row: 11,
    what: `limits and a network of the run's own: trivial run at sandbox (median of ${n}, interleaved) with the defaults (limits, RUN_NETWORK=egress); the broker's added latency per streamed model event through socat and the run's socket (${events} events × 3)`,
    compared_with: 'the same at sandbox with RUN_NETWORK=host, RUN_MEMORY_MAX=none, RUN_PIDS_MAX=none; the same stream read from the model directly (and through the broker over TCP)',
    measured: (ran ? `${round(median(withBoth), 0)} ms${state(health.both)}` : runsSkipped) + `; ${brokerText}`,
    baseline: (ran ? `${round(median(withNeither), 0)} ms${state(health.neither)}` : '—') + `; direct p50 ${round(quantile(direct, 0.5), 2)} ms, p99 ${round(quantile(direct, 0.99), 2)} ms`,
    figure: ran ? round(ratio, 3) : null,
    unit: '× (limits + own network vs neither, at sandbox)',
    budget: '≤ 1.10×; socket path ≤ 1 ms added p99 per event',
    pass: ratioOk(1.10) && p99Ok(1),
    smoke_pass: ratioOk(2) && p99Ok(20),
    details: {
      both_ms: withBoth.map(x => round(x, 1)),
      neither_ms: withNeither.map(x => round(x, 1)),
      enforced: { both: health.both?.limits.enforced, neither: health.neither?.limits.enforced },
      network: { both: health.both?.isolation.network, neither: health.neither?.isolation.network },
      limits: { both: health.both?.limits, neither: health.neither?.limits },
      ...(runsSkipped !== '' ? { runs_skipped: runsSkipped } : {}),
      ...(socketSkipped !== '' ? { socket_skipped: socketSkipped } : {}),
      socket_added_ms_vs_direct: overDirect,
      socket_added_ms_vs_tcp_broker: overTcp,
      tcp_broker_added_ms_vs_direct: tcpOverDirect,
      direct_ms_p99: quantile(direct, 0.99),
      tcp_ms_p99: quantile(tcp, 0.99),
      socket_ms_p99: viaSocket.length > 0 ? quantile(viaSocket, 0.99) : null
    }
  })
}
