import { execFileSync } from 'node:child_process'
import { request } from 'node:http'
import { defaultMaxConnections, openFileLimit } from '../../src/config.js'
import { API_KEY, headers, median, readSse, round } from '../lib.js'
import { log, model, quick, rows, server } from '../context.js'

/** One listener as its client saw it: the ids it received, in order, and when the last arrived (ms since the epoch). */
interface Heard { ids: number[], lastAt: number }

/**
 * Enough descriptors for `sockets` connections at both ends: this process holds the clients, and
 * the server (spawned after, inheriting the limit) accepts them within its default MAX_CONNECTIONS
 * (src/config.ts: three quarters of its limit, less 64). Node raises its soft limit to the hard one
 * by itself; past that, prlimit raises both where the process may (CAP_SYS_RESOURCE). Throws,
 * saying what the machine gives, when neither suffices.
 */
function ensureFileLimit (sockets: number): void {
  let needed = 1024
  while (defaultMaxConnections(needed) < sockets + 64) needed += 1024
  if (openFileLimit() >= needed) return
  try {
    execFileSync('prlimit', [`--pid=${process.pid}`, `--nofile=${needed}:${needed}`], { stdio: 'ignore' })
  } catch {}
  if (openFileLimit() < needed) throw new Error(`${sockets} listeners need ${needed} open files; this process may have ${openFileLimit()} (raise ulimit -Hn)`)
}

/**
 * Open one listener on `url` (its own socket, no keep-alive): resolves once the response's headers
 * are in; `done` resolves with what it heard once the stream ends (or breaks).
 */
async function listen (url: string): Promise<{ done: Promise<Heard> }> {
  return await new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers: { 'x-api-key': API_KEY, connection: 'close' } }, res => {
      if (res.statusCode !== 200) {
        reject(new Error(`listener answered ${res.statusCode ?? '?'}`))
        res.resume()
        return
      }
      const heard: Heard = { ids: [], lastAt: 0 }
      let buffer = ''
      res.setEncoding('utf8')
      // Never rejects: a stream cut short is seen in what it heard.
      const done = new Promise<Heard>(resolve => {
        res.on('data', (chunk: string) => {
          buffer += chunk
          let end
          while ((end = buffer.indexOf('\n\n')) !== -1) {
            const frame = buffer.slice(0, end)
            buffer = buffer.slice(end + 2)
            if (frame.startsWith('id: ')) {
              heard.ids.push(Number(frame.slice(4, frame.indexOf('\n'))))
              heard.lastAt = Date.now()
            }
          }
        })
        res.on('close', () => resolve(heard))
        res.on('error', () => resolve(heard))
      })
      resolve({ done })
    })
    req.on('error', reject)
    req.end()
  })
}

/**
 * Row 5: many listeners (10,000 in the full run) on one run's /api/runs/{id}/events, all connected
 * before the run starts: every listener must get every event in order; the server's peak RSS and
 * the time from the run's start to the last listener's last event, against the same run followed
 * by one listener.
 */
export async function listeners (): Promise<void> {
  const count = quick ? 200 : 10_000
  // Connections opened at once: more would overflow the listen backlog (SYNs dropped, retried after 1 s).
  const opening = 200
  log(`row 5: ${count} listeners on one run`)
  ensureFileLimit(count)
  // One run at a time: the crowd's run waits behind a stalled one until every listener is on it.
  const srv = await server({ MAX_CONCURRENT_RUNS: '1' })
  const pieces = Array.from({ length: 30 }, (_, i) => `piece ${i}`)
  model.on('for the crowd', [{ text: pieces, gapMs: 100 }])
  model.on('hold the queue', [{ stall: true }])
  const post = async (prompt: string): Promise<string> =>
    (await (await fetch(`${srv.url}/api/runs`, { method: 'POST', headers, body: JSON.stringify({ prompt }) })).json() as { id: string }).id
  /** A run's start and end (the server's clock: the same machine's), ms since the epoch, and its status. */
  const times = async (id: string): Promise<{ started: number, ended: number, status: string }> => {
    const v = await (await fetch(`${srv.url}/api/runs/${id}`, { headers })).json() as { started_at: string, ended_at: string, status: string }
    return { started: new Date(v.started_at).getTime(), ended: new Date(v.ended_at).getTime(), status: v.status }
  }
  let heard: Heard[] = []
  const replay: number[] = []
  let crowd = { started: 0, ended: 0, status: '' }
  let solo = { started: 0, ended: 0, status: '', lastAt: 0 }
  let connectMs = 0
  let rss = { now: 0, peak: 0 }
  let rssConnected = 0
  try {
    // The baseline (the full run only: the smoke test checks delivery): the same run followed by one listener.
    if (!quick) {
      const alone = await post('for the crowd')
      const { lastAt } = await (await listen(`${srv.url}/api/runs/${alone}/events`)).done
      solo = { ...await times(alone), lastAt }
    }
    const blocker = await post('hold the queue')
    const id = await post('for the crowd')
    const c0 = performance.now()
    const streams: Array<Promise<Heard>> = []
    let next = 0
    await Promise.all(Array.from({ length: opening }, async () => {
      while (next < count) {
        next++
        streams.push((await listen(`${srv.url}/api/runs/${id}/events`)).done)
      }
    }))
    connectMs = performance.now() - c0
    rssConnected = srv.rss().now
    log(`row 5: ${count} listeners connected in ${round(connectMs / 1000, 1)} s; starting the run`)
    await fetch(`${srv.url}/api/runs/${blocker}/cancel`, { method: 'POST', headers: { 'x-api-key': API_KEY } })
    heard = await Promise.all(streams)
    rss = srv.rss()
    await readSse(await fetch(`${srv.url}/api/runs/${id}/events`, { headers }), e => replay.push(e.id))
    crowd = await times(id)
  } finally {
    await srv.stop()
  }
  const inOrder = (ids: number[]): boolean => ids.length === replay.length && ids.every((x, i) => x === replay[i])
  const short = heard.filter(h => h.ids.length < replay.length).length
  const wrong = heard.filter(h => !inOrder(h.ids)).length
  const allGotAll = heard.length === count && wrong === 0 && replay.length > 1
  const lasts = heard.map(h => h.lastAt - crowd.started)
  const lastMs = Math.max(...lasts)
  const runMs = crowd.ended - crowd.started
  const soloMs = solo.lastAt - solo.started
  rows.push({
    row: 5,
    what: `${count} concurrent listeners on one run's /api/runs/{id}/events, all connected before it starts`,
    compared_with: 'the same run followed by one listener, on the same server',
    measured: `${allGotAll ? 'every listener' : `NOT every listener (${wrong} wrong, ${short} short)`} got all ${replay.length} events in order; the last listener's last event ${round(lastMs, 0)} ms after the run's start (the run itself ${round(runMs, 0)} ms); server peak RSS ${round(rss.peak, 0)} MB`,
    baseline: quick ? '— (full run only)' : `last event ${round(soloMs, 0)} ms after the run's start (the run itself ${round(solo.ended - solo.started, 0)} ms)`,
    figure: round(rss.peak, 0),
    unit: 'MB peak RSS',
    budget: 'all receive every event, in order; RSS and time reported',
    pass: allGotAll,
    smoke_pass: allGotAll,
    details: {
      listeners: count,
      events: replay.length,
      listeners_wrong: wrong,
      listeners_short: short,
      run_status: crowd.status,
      run_ms: runMs,
      ...(quick ? {} : { solo_run_status: solo.status, solo_run_ms: solo.ended - solo.started, solo_last_event_ms: soloMs }),
      last_event_ms: lastMs,
      last_event_after_run_end_ms: lastMs - runMs,
      last_event_median_ms: median(lasts),
      connect_all_ms: round(connectMs, 0),
      rss_connected_mb: round(rssConnected, 0),
      rss_end_mb: round(rss.now, 0),
      rss_peak_mb: round(rss.peak, 0)
    }
  })
}
