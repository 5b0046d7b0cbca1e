import { round } from '../lib.js'
import { clusterRow } from '../cluster.js'
import { log, quick, rows, runs, server } from '../context.js'

/**
 * Row 10: cluster mode on PostgreSQL (measured in bench/cluster.ts): event-log appends and replay
 * against the embedded SQLite store, runs/s through two instances against one, and one run
 * followed by listeners split over two instances.
 */
export async function clusterMode (): Promise<void> {
  log('row 10: cluster mode on PostgreSQL')
  const r = await clusterRow({ quick, server, runs, log }) as any
  const scale = r.two / r.one
  rows.push({
    row: 10,
    what: `cluster mode (PostgreSQL): event-log appends and replay of ${r.events as number} events; runs/s through 2 instances (2 slots each, fake CLI, ${r.runs as number} runs of ${r.runMs / 1000 as number} s); one run followed by ${r.listeners as number} listeners split over 2 instances`,
    compared_with: 'the embedded SQLite store; 1 instance',
    measured: `PostgreSQL ${round(r.onPg.perSecond, 0)} events/s, replay ${round(r.onPg.replayMs, 0)} ms; 2 instances ${round(r.two, 2)} runs/s; fan-out: all ${r.listeners as number} got all ${r.fanOut.events as number} events: ${r.fanOut.all ? 'yes' : 'NO'} (${round(r.fanOut.lastMs, 0)} ms)`,
    baseline: `SQLite ${round(r.onSqlite.perSecond, 0)} events/s, replay ${round(r.onSqlite.replayMs, 0)} ms; 1 instance ${round(r.one, 2)} runs/s`,
    figure: round(scale, 2),
    unit: '× runs/s (2 instances / 1)',
    budget: '≥ 1.8×; every listener gets every event',
    pass: scale >= 1.8 && r.fanOut.all === true,
    smoke_pass: scale >= 1.3 && r.fanOut.all === true,
    details: r
  })
}
