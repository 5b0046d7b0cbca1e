import type { Attachment, RunResult, RunStatus } from '../domain/run.js'
import { InvalidRequest, withProblem } from '../domain/errors.js'
import { contentOf, finishReasonOf } from './chat.js'
import type { FunctionCall } from './functions.js'
import { readMessages, type ChatMessage, type ContentPart, type Turn } from './messages.js'

// OpenAI's Responses API over a run: its input read as turns, and the `response` object (with the
// events of its stream) made from the run as it stands.

/** An input item of the Responses API, loosely typed as clients send them. */
export interface InputItem {
  type?: string
  role?: string
  content?: string | Array<{ type: string, text?: string, image_url?: string, [k: string]: unknown }>
  call_id?: string
  output?: string
  [k: string]: unknown
}

const bad = (param: string, message: string): Error => withProblem(new InvalidRequest(message), { problem: { param } })

/** `input` (a string, or message items) as the turns of a conversation and its system text. */
export function readInput (input: string | InputItem[], instructions: string | undefined): { system: string | undefined, turns: Turn[] } {
  const items = typeof input === 'string' ? [{ type: 'message', role: 'user', content: input }] : input
  /** Where each message came from in `input` (reasoning items are left out). */
  const from: number[] = []
  const messages: ChatMessage[] = []
  items.forEach((item, i) => {
    if (typeof item !== 'object' || item === null) throw bad(`input[${i}]`, `input[${i}] must be an input item`)
    const m = messageOf(item, i)
    if (m === undefined) return
    from.push(i)
    messages.push(m)
  })
  if (instructions !== undefined) messages.unshift({ role: 'system', content: instructions })
  try {
    return readMessages(messages)
  } catch (err) {
    // readMessages names messages[i]; here they are input[j] (less the instructions put first).
    const e = err as Error & { problem?: { param?: string } }
    const shift = instructions !== undefined ? 1 : 0
    const rename = (s: string): string => s.replace(/messages\[(\d+)\]/g, (_m, n: string) => `input[${from[Number(n) - shift] ?? 0}]`).replace(/^messages\b/, 'input')
    e.message = rename(e.message)
    if (e.problem?.param !== undefined) e.problem.param = rename(e.problem.param)
    throw e
  }
}

/** An input item as a chat message: a message, a function call the model made, or its output. */
function messageOf (item: InputItem, i: number): ChatMessage | undefined {
  if (item.type === 'reasoning') return undefined
  if (item.type === 'function_call') {
    if (typeof item.call_id !== 'string' || typeof item.name !== 'string' || typeof item.arguments !== 'string') throw bad(`input[${i}]`, `input[${i}]: a function_call item needs call_id, name and arguments (text)`)
    return { role: 'assistant', content: null, tool_calls: [{ id: item.call_id, type: 'function', function: { name: item.name, arguments: item.arguments } }] }
  }
  if (item.type === 'function_call_output') {
    if (typeof item.call_id !== 'string') throw bad(`input[${i}].call_id`, `input[${i}].call_id is required`)
    const output: unknown = item.output
    const text = typeof output === 'string'
      ? output
      : Array.isArray(output) ? output.map(p => typeof (p as { text?: unknown })?.text === 'string' ? (p as { text: string }).text : '').join('\n') : undefined
    if (text === undefined) throw bad(`input[${i}].output`, `input[${i}].output must be text`)
    return { role: 'tool', tool_call_id: item.call_id, content: text }
  }
  {
    if (item.content !== undefined && typeof item.content !== 'string' && !(Array.isArray(item.content) && item.content.every(p => typeof p === 'object' && p !== null && typeof p.type === 'string'))) {
      throw bad(`input[${i}].content`, `input[${i}].content must be text or a list of parts ({ type, … })`)
    }
    if (item.type !== undefined && item.type !== 'message') throw bad(`input[${i}].type`, `input[${i}]: items of type ${item.type} are not supported (message, function_call, function_call_output)`)
    const role = item.role ?? 'user'
    const content: ChatMessage['content'] = typeof item.content === 'string'
      ? item.content
      : (item.content ?? []).map((p, j): ContentPart => {
          if (p.type === 'input_text' || p.type === 'output_text' || p.type === 'text') return { type: 'text', text: p.text ?? '' }
          if (p.type === 'input_image') {
            if (typeof p.image_url !== 'string') throw bad(`input[${i}].content[${j}].image_url`, `input[${i}].content[${j}].image_url: a data: URL is required (the server does not fetch images, nor read file ids)`)
            return { type: 'image_url', image_url: { url: p.image_url } }
          }
          throw bad(`input[${i}].content[${j}].type`, `input[${i}].content[${j}]: parts of type ${p.type} are not supported (input_text, input_image)`)
        })
    return { role: role as ChatMessage['role'], content }
  }
}

/** Images of the turns given. */
export const imagesOf = (turns: Turn[]): Attachment[] => turns.flatMap(t => t.images)

type ResponseStatus = 'queued' | 'in_progress' | 'completed' | 'failed' | 'cancelled' | 'incomplete'

function statusOf (run: RunStatus, r: RunResult | null): ResponseStatus {
  switch (run) {
    case 'queued': return 'queued'
    case 'running': return 'in_progress'
    case 'cancelled': return 'cancelled'
    case 'succeeded': return 'completed'
  }
  return r !== null && finishReasonOf(r) === 'length' ? 'incomplete' : 'failed'
}

/** What a response echoes of its request. */
export interface ResponseRequest {
  model: string
  instructions?: string | undefined
  previousResponseId?: string | undefined
  background: boolean
  /** `text.format`, as asked (a `json_schema` one makes the output the structured result). */
  format?: Record<string, unknown> | undefined
  metadata?: Record<string, string> | undefined
  /** The function tools offered, as the client sent them. */
  tools?: unknown[] | undefined
}

/** A `response` object. */
export type ResponseObject = { id: string, object: 'response', status: ResponseStatus } & Record<string, unknown>

/** The `response` object of a run, as it stands (`result` once it has ended). */
export function responseOf (id: string, createdAt: number, status: RunStatus, result: RunResult | null, req: ResponseRequest): ResponseObject {
  const s = statusOf(status, result)
  const structured = req.format?.type === 'json_schema'
  const text = result !== null && (s === 'completed' || s === 'incomplete') ? contentOf(result, structured) : ''
  const usage = result?.usage ?? null
  const n = (v: unknown): number => typeof v === 'number' ? v : 0
  const input = usage === null ? 0 : n(usage.input_tokens) + n(usage.cache_creation_input_tokens) + n(usage.cache_read_input_tokens)
  return {
    id,
    object: 'response' as const,
    created_at: Math.floor(createdAt / 1000),
    status: s,
    background: req.background,
    error: s === 'failed' || (s === 'cancelled' && result !== null) ? { code: result?.error_code ?? 'run_failed', message: result?.error ?? `the run ended ${status}` } : null,
    incomplete_details: s === 'incomplete' ? { reason: 'max_output_tokens' } : null,
    instructions: req.instructions ?? null,
    max_output_tokens: null,
    metadata: req.metadata ?? {},
    model: req.model,
    output: text === '' ? [] : [outputMessage(id, text, 'completed')],
    parallel_tool_calls: false,
    previous_response_id: req.previousResponseId ?? null,
    temperature: null,
    text: { format: req.format ?? { type: 'text' } },
    tool_choice: 'auto',
    tools: req.tools ?? [],
    top_p: null,
    truncation: 'disabled',
    usage: usage === null
      ? null
      : { input_tokens: input, input_tokens_details: { cached_tokens: n(usage.cache_read_input_tokens) }, output_tokens: n(usage.output_tokens), output_tokens_details: { reasoning_tokens: 0 }, total_tokens: input + n(usage.output_tokens) },
    user: null
  }
}

/** The assistant's message item of a response (its id derived from the response's). */
export function outputMessage (id: string, text: string, status: 'in_progress' | 'completed'): Record<string, unknown> {
  return { type: 'message', id: `msg_${id}`, status, role: 'assistant', content: status === 'completed' ? [{ type: 'output_text', text, annotations: [] }] : [] }
}

/** A function call the model made, as an output item (its id derived from the call's). */
export function functionCallItem (call: FunctionCall, status: 'in_progress' | 'completed'): Record<string, unknown> {
  return { type: 'function_call', id: `fc_${call.call_id}`, call_id: call.call_id, name: call.name, arguments: status === 'completed' ? call.arguments : '', status }
}

/**
 * The `response` of a run parked at calls of the client's functions: completed, its output the
 * text said before them and the calls (the client answers with `function_call_output` items).
 */
export function callsResponseOf (id: string, createdAt: number, text: string, calls: FunctionCall[], req: ResponseRequest): ResponseObject {
  const base = responseOf(id, createdAt, 'running', null, req)
  return { ...base, status: 'completed', output: [...(text === '' ? [] : [outputMessage(id, text, 'completed')]), ...calls.map(c => functionCallItem(c, 'completed'))] }
}
