import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { spawn } from 'node:child_process'
import { defaultCliPath } from '../../src/engine/launch.js'
import { cliArgs, cliEnv, headers, median, readSse, round } from '../lib.js'
import { agentServer, log, model, quick, rows } from '../context.js'

/** One request of the mix: a new session (plain, or with an option set), or the next turn of the last run's session. */
type Kind = 'plain' | 'options' | 'follow-up'
interface Timed { kind: Kind, first: number, total: number }

/** The option set of the mix's customised runs (what a bot sends with every run). */
const OPTIONS = { system_prompt: 'You are the release bot. Answer in one line.', allowed_tools: ['Read', 'Grep'] }

/** The results of runs of the mix that failed (the row fails with any). */
const failures: string[] = []

/** POST /api/execute/stream: ms to the first `message` event and to `result`, and the run's session. */
async function streamed (url: string, body: Record<string, unknown>): Promise<{ first: number, total: number, session: string }> {
  const t0 = performance.now()
  let first = 0
  let total = 0
  let session = ''
  const res = await fetch(`${url}/api/execute/stream`, { method: 'POST', headers, body: JSON.stringify(body) })
  await readSse(res, e => {
    if (e.event === 'message' && first === 0) first = performance.now() - t0
    if (e.event === 'result') {
      total = performance.now() - t0
      const r = JSON.parse(e.data) as { success: boolean, session_id: string }
      if (!r.success) failures.push(e.data.slice(0, 400))
      session = r.session_id
    }
  })
  return { first, total, session }
}

/** A claim counter of /metrics. */
async function claims (url: string, outcome: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`, { headers })).text()
  return Number(new RegExp(`ccapi_warm_claims_total\\{outcome="${outcome}"\\} (\\d+)`).exec(text)?.[1] ?? 0)
}

/**
 * Row 15: warm starts for the traffic people send, at the server's default isolation level (a
 * root server with no `ISOLATION` set: the sandbox, each key its identity): a mix of 40 %
 * option-free new sessions, 30 % new sessions with a system prompt and tools, and 30 % next turns
 * of the session just run (seconds later), against the same mix on a server with no spares and no
 * keep-alive, and the bare CLI.
 */
export async function warmMix (): Promise<void> {
  const cycles = quick ? 1 : 3
  const pattern: Kind[] = ['plain', 'options', 'follow-up', 'plain', 'options', 'follow-up', 'plain', 'options', 'follow-up', 'plain']
  const mix = Array.from({ length: cycles }, () => pattern).flat()
  log(`row 15: warm starts on a mix of ${mix.length} runs (40 % plain, 30 % with options, 30 % follow-ups) at the default isolation level`)
  const base = mkdtempSync('/var/tmp/ccapi-bench-mix-')
  chmodSync(base, 0o755)
  // No ISOLATION: the default (as root: the sandbox where bubblewrap is installed).
  const warm = await agentServer(base, 'warm', { WARM_SPARES: '1', SESSION_KEEPALIVE_S: '60' })
  const cold = await agentServer(base, 'cold', { WARM_SPARES: '0', SESSION_KEEPALIVE_S: '0' })
  const level = ((await (await fetch(`${warm.url}/health`)).json()) as { isolation?: { level?: string } }).isolation?.level ?? 'unknown'
  const env = cliEnv(join(base, 'home-bare'), model.url)
  mkdirSync(join(base, 'work-bare'), { recursive: true })
  const bare = async (): Promise<number> => {
    const t0 = performance.now()
    const child = spawn(defaultCliPath(), cliArgs(randomUUID()), { cwd: join(base, 'work-bare'), env, detached: true, stdio: ['pipe', 'ignore', 'ignore'] })
    child.stdin!.end('say hi')
    await new Promise(resolve => child.once('exit', resolve))
    return performance.now() - t0
  }
  const w: Timed[] = []
  const c: Timed[] = []
  const b: number[] = []
  let hits = 0
  let kept = 0
  let misses = 0
  try {
    // The key's first runs: its identity is made, and the spares of what it sends are in demand.
    let last = { warm: '', cold: '' }
    let previous: Kind = 'options'
    for (const body of [{ prompt: 'say hi' }, { prompt: 'say hi', ...OPTIONS }]) {
      last = { warm: (await streamed(warm.url, body)).session, cold: (await streamed(cold.url, body)).session }
    }
    await bare()
    const before = { hits: await claims(warm.url, 'hit'), kept: await claims(warm.url, 'kept'), misses: await claims(warm.url, 'miss') }
    // Let the spares those runs asked for park: traffic then comes at its own pace.
    await new Promise(resolve => setTimeout(resolve, 3000))
    for (const kind of mix) {
      // A follow-up sends what its session's runs send (a bot's system prompt and tools, every time).
      const body = (s: string): Record<string, unknown> => kind === 'plain' ? { prompt: 'say hi' } : kind === 'options' ? { prompt: 'say hi', ...OPTIONS } : { prompt: 'and again', session_id: s, ...(previous === 'options' ? OPTIONS : {}) }
      const rw = await streamed(warm.url, body(last.warm))
      const rc = await streamed(cold.url, body(last.cold))
      w.push({ kind, first: rw.first, total: rw.total })
      c.push({ kind, first: rc.first, total: rc.total })
      last = { warm: rw.session, cold: rc.session }
      previous = kind === 'follow-up' ? previous : kind
      if (kind === 'plain') b.push(await bare())
      // A person (or a bot) between messages.
      await new Promise(resolve => setTimeout(resolve, 500))
    }
    hits = await claims(warm.url, 'hit') - before.hits
    kept = await claims(warm.url, 'kept') - before.kept
    misses = await claims(warm.url, 'miss') - before.misses
  } finally {
    await warm.stop()
    await cold.stop()
    rmSync(base, { recursive: true, force: true })
  }
  const of = (xs: Timed[], kinds: Kind[], k: 'first' | 'total'): number => median(xs.filter(x => kinds.includes(x.kind)).map(x => x[k]))
  const fresh: Kind[] = ['plain', 'options']
  const hitRate = (hits + kept) / mix.length
  const trivialRatio = of(w, ['plain'], 'total') / median(b)
  const firstRatio = of(w, fresh, 'first') / of(c, fresh, 'first')
  const followRatio = of(w, ['follow-up'], 'total') / of(c, ['follow-up'], 'total')
  rows.push({
    row: 15,
    what: `warm for real traffic at the default isolation level (${level}): ${mix.length} runs, 40 % plain new sessions, 30 % with a system prompt and tools, 30 % next turns of the session just run; medians`,
    compared_with: 'the same mix on a server without spares or keep-alive; the bare CLI (trivial run, spawn to exit)',
    measured: `${failures.length > 0 ? `${failures.length} runs FAILED; ` : ''}hit rate ${round(hitRate * 100, 0)} % (${hits} on spares, ${kept} on kept sessions, ${misses} cold); new sessions first event ${round(of(w, fresh, 'first'), 0)} ms (plain ${round(of(w, ['plain'], 'first'), 0)}, with options ${round(of(w, ['options'], 'first'), 0)}); trivial run ${round(of(w, ['plain'], 'total'), 0)} ms; follow-up turn ${round(of(w, ['follow-up'], 'total'), 0)} ms`,
    baseline: `cold first event ${round(of(c, fresh, 'first'), 0)} ms; cold resume ${round(of(c, ['follow-up'], 'total'), 0)} ms; bare CLI ${round(median(b), 0)} ms`,
    figure: round(hitRate, 2),
    unit: `hit rate; ${round(trivialRatio, 2)}× trivial run (warm/bare CLI); ${round(firstRatio, 2)}× first event (warm/cold); ${round(followRatio, 2)}× follow-up (kept/cold resume)`,
    budget: 'hit rate ≥ 80 %; trivial run ≤ 0.5× bare CLI; first event ≤ 0.25× cold; follow-up ≤ 0.3× cold resume',
    pass: failures.length === 0 && hitRate >= 0.8 && trivialRatio <= 0.5 && firstRatio <= 0.25 && followRatio <= 0.3,
    smoke_pass: failures.length === 0 && hitRate >= 0.5 && firstRatio <= 1 && followRatio <= 1,
    details: { level, warm_ms: w, cold_ms: c, bare_ms: b, hits, kept, misses, failures }
  })
}
