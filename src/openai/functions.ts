import { InvalidRequest, withProblem } from '../domain/errors.js'
import type { ClientTool, RunEvent, RunResult } from '../domain/run.js'

// A run that offers the client's functions goes in segments: from its start (or from the client's
// last answers) to its next calls of those functions, where it parks, or to its end. The OpenAI
// routes answer one segment per request, and the client's outputs of the calls start the next one.

/** A call of one of the client's functions, as the run announced it (`tool_call` event). */
export interface FunctionCall { call_id: string, name: string, arguments: string }

/** What a run did from one point on: the calls it parked at (none once it ended), its result. */
export interface Segment {
  calls: FunctionCall[]
  result?: RunResult
  /** The last event seen: where the next segment starts. */
  after: number
  /** The segment was followed to its end (its calls or the result); false when the client left. */
  complete: boolean
}

/** How long the calls the model made together are gathered before they are answered. */
const GATHER_MS = 150

type Follow = (runId: string, after: number, write: (e: RunEvent) => boolean, drained: () => Promise<void>, signal: AbortSignal) => Promise<boolean>

/**
 * Follow a run from event `after` on to its next calls of the client's functions or its end,
 * handing every other event to `on` (which returns false to wait for `drained`, as `follow` does).
 */
export async function followSegment (follow: Follow, runId: string, after: number, on: (e: RunEvent) => boolean, drained: () => Promise<void>, signal?: AbortSignal): Promise<Segment> {
  const calls: FunctionCall[] = []
  let result: RunResult | undefined
  let last = after
  const gathered = new AbortController()
  let timer: NodeJS.Timeout | undefined
  const ended = await follow(runId, after, e => {
    last = e.seq
    if (e.type === 'tool_call') {
      calls.push(JSON.parse(e.data) as FunctionCall)
      // Calls the model made together arrive together: a moment for the rest.
      timer ??= setTimeout(() => gathered.abort(), GATHER_MS)
      return true
    }
    if (e.type === 'result') result = JSON.parse(e.data) as RunResult
    return on(e)
  }, drained, signal === undefined ? gathered.signal : AbortSignal.any([signal, gathered.signal]))
  clearTimeout(timer)
  if (result !== undefined) return { calls: [], result, after: last, complete: true }
  return { calls, after: last, complete: ended || (calls.length > 0 && signal?.aborted !== true) }
}

interface Parked { runId: string, key: string, after: number }

/**
 * The calls runs parked, by call id, until the client answers them: the client's next request
 * carries its outputs with those ids, and goes on with that run. In memory, per instance, bounded
 * (the oldest forgotten first; a forgotten call's run times it out as it would an approval).
 */
export class ParkedCalls {
  private readonly calls = new Map<string, Parked>()

  constructor (private readonly max = 10_000) {}

  park (key: string, runId: string, calls: FunctionCall[], after: number): void {
    for (const c of calls) {
      this.calls.delete(c.call_id)
      this.calls.set(c.call_id, { runId, key, after })
    }
    while (this.calls.size > this.max) {
      const oldest = this.calls.keys().next().value
      if (oldest === undefined) break
      this.calls.delete(oldest)
    }
  }

  /**
   * The run that parked every one of `callIds` for `key` (and where it parked), taken off the
   * list; undefined (nothing taken) when any of them is not such a call or they are of two runs.
   */
  take (key: string, callIds: string[]): { runId: string, after: number } | undefined {
    if (callIds.length === 0) return undefined
    const found = callIds.map(id => this.calls.get(id))
    const runId = found[0]?.runId
    if (runId === undefined || !found.every(p => p !== undefined && p.key === key && p.runId === runId)) return undefined
    for (const id of callIds) this.calls.delete(id)
    return { runId, after: Math.max(...found.map(p => p?.after ?? 0)) }
  }
}

/**
 * OpenAI's function tools as the run's client tools (none with `tool_choice: "none"`). Chat
 * Completions nests a function (`{ type, function: { name, … } }`), the Responses API does not
 * (`{ type, name, … }`); there, hosted tool types (web search, file search, a shell…) are left to the
 * agent, which has its own.
 */
export function clientToolsOf (tools: Array<Record<string, unknown>> | undefined, choice: unknown, api: 'chat' | 'responses'): ClientTool[] {
  if (tools === undefined || tools === null || choice === 'none') return []
  const out: ClientTool[] = []
  tools.forEach((t, i) => {
    if (api === 'responses' && t.type !== 'function') return
    const f = (api === 'chat' ? t.function : t) as { name?: unknown, description?: unknown, parameters?: unknown } | undefined
    const param = api === 'chat' ? `tools[${i}].function.name` : `tools[${i}].name`
    if (t.type !== 'function') throw withProblem(new InvalidRequest(`tools[${i}].type: only function tools are offered (the agent has its own tools)`), { problem: { param: `tools[${i}].type` } })
    if (typeof f?.name !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(f.name)) {
      throw withProblem(new InvalidRequest(`${param}: a function name of letters, digits, _ or - (at most 64) is required`), { problem: { param } })
    }
    if (out.some(o => o.name === f.name)) throw withProblem(new InvalidRequest(`${param}: ${f.name} is offered twice`), { problem: { param } })
    out.push({ name: f.name, ...(typeof f.description === 'string' ? { description: f.description } : {}), ...(typeof f.parameters === 'object' && f.parameters !== null ? { parameters: f.parameters as Record<string, unknown> } : {}) })
  })
  return out
}
