import { headers, readSse, round } from '../lib.js'
import { log, quick, rows, server } from '../context.js'

/**
 * Row 7: event-log writes of one chatty run (events/s, end to end) and the replay of a finished
 * 10,000-event run over SSE (absolute bound). The standalone script bench/event-log.ts measures the
 * same in process.
 */
export async function eventLogWrites (): Promise<void> {
  const lines = quick ? 20_000 : 100_000
  log(`row 7: event log, ${lines} lines; replay of a 10,000-event run`)
  const srv = await server({}, true)
  const waitEnd = async (id: string): Promise<any> => {
    for (;;) {
      const v = await (await fetch(`${srv.url}/api/runs/${id}`, { headers })).json() as { result: unknown }
      if (v.result !== null) return v
      await new Promise(resolve => setTimeout(resolve, 20))
    }
  }
  let rate = 0
  let replayMs = 0
  let replayEvents = 0
  try {
    const chatty = await (await fetch(`${srv.url}/api/runs`, { method: 'POST', headers, body: JSON.stringify({ prompt: `chatty ${lines}` }) })).json() as { id: string }
    const v = await waitEnd(chatty.id)
    const ms = new Date(v.ended_at).getTime() - new Date(v.started_at).getTime()
    // Every CLI line is a `message` event and a `text` event.
    rate = (lines * 2) / (ms / 1000)
    const small = await (await fetch(`${srv.url}/api/runs`, { method: 'POST', headers, body: JSON.stringify({ prompt: 'chatty 4998' }) })).json() as { id: string }
    await waitEnd(small.id)
    const t0 = performance.now()
    await readSse(await fetch(`${srv.url}/api/runs/${small.id}/events`, { headers }), () => { replayEvents++ })
    replayMs = performance.now() - t0
  } finally {
    await srv.stop()
  }
  rows.push({
    row: 7,
    what: `event-log writes for one chatty run (${lines * 2} events); replay of a ${replayEvents}-event run over SSE`,
    compared_with: '—',
    measured: `${round(rate, 0)} events/s; replay ${round(replayMs, 0)} ms`,
    baseline: '—',
    figure: round(replayMs, 0),
    unit: 'ms replay',
    budget: 'reported; replay < 1 s',
    pass: replayMs < 1000 && replayEvents === 10_000,
    smoke_pass: replayMs < 5000 && replayEvents === 10_000,
    details: { events_per_s: round(rate, 0), replay_events: replayEvents }
  })
}
