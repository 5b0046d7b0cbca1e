import type { RunResult } from '../domain/run.js'

// The objects of OpenAI's Chat Completions API, made from a run: the completion, its stream's
// chunks, its usage, and an error in OpenAI's shape.

/** An error as OpenAI's API answers it (the official clients raise their typed errors from it). */
export interface OpenAiError {
  error: { message: string, type: string, param: string | null, code: string | null }
}

/** OpenAI's error `type` for an HTTP status. */
export function errorType (status: number): string {
  if (status === 401) return 'authentication_error'
  if (status === 403) return 'permission_error'
  if (status === 404) return 'invalid_request_error'
  if (status === 429) return 'rate_limit_exceeded'
  if (status >= 500) return 'server_error'
  return 'invalid_request_error'
}

export function openAiError (status: number, message: string, code: string | null, param: string | null = null): OpenAiError {
  return { error: { message, type: errorType(status), param, code } }
}

/** Usage in OpenAI's terms: every input token the model read (cached or not), and what it wrote. */
export function usageOf (r: RunResult): { prompt_tokens: number, completion_tokens: number, total_tokens: number, prompt_tokens_details: { cached_tokens: number } } {
  const u = r.usage ?? {}
  const n = (v: unknown): number => typeof v === 'number' ? v : 0
  const cached = n(u.cache_read_input_tokens)
  const prompt = n(u.input_tokens) + n(u.cache_creation_input_tokens) + cached
  const completion = n(u.output_tokens)
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion, prompt_tokens_details: { cached_tokens: cached } }
}

/** Why the answer stopped: `length` when the run ran out of turns or budget, else `stop`. */
export function finishReasonOf (r: RunResult): 'stop' | 'length' {
  return r.error_code === 'max_turns' || r.error_code === 'max_budget' || r.truncated ? 'length' : 'stop'
}

/** The answer's content: the structured output as JSON text when one was asked for, else the text. */
export function contentOf (r: RunResult, structured: boolean): string {
  return structured && r.structured_output !== null && r.structured_output !== undefined ? JSON.stringify(r.structured_output) : r.output
}

/** A run that did not answer, as an OpenAI error: what status, code and message. */
export function failureOf (r: RunResult): { status: number, body: OpenAiError } {
  const status = r.error_code === 'api_error' && r.api_error_status === 429 ? 429 : r.error_code === 'timeout' ? 504 : r.error_code === 'cancelled' ? 499 : 500
  return { status, body: openAiError(status, r.error ?? `the run ended ${r.status}`, r.error_code ?? 'run_failed') }
}

export const created = (): number => Math.floor(Date.now() / 1000)

/** `chat.completion`: the whole answer. */
export function completionOf (r: RunResult, model: string, structured: boolean, at: number): Record<string, unknown> {
  return {
    id: r.run_id,
    object: 'chat.completion',
    created: at,
    model,
    choices: [{ index: 0, message: { role: 'assistant', content: contentOf(r, structured), refusal: null }, finish_reason: finishReasonOf(r), logprobs: null }],
    usage: usageOf(r),
    system_fingerprint: null
  }
}

/** One `chat.completion.chunk` of a stream. */
export function chunkOf (id: string, model: string, at: number, delta: Record<string, unknown>, finishReason: string | null = null, usage?: unknown): Record<string, unknown> {
  return {
    id,
    object: 'chat.completion.chunk',
    created: at,
    model,
    choices: usage !== undefined && Object.keys(delta).length === 0 && finishReason === null ? [] : [{ index: 0, delta, finish_reason: finishReason, logprobs: null }],
    ...(usage !== undefined ? { usage } : {}),
    system_fingerprint: null
  }
}
