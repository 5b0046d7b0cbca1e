import type { CliResultLine } from './result.js'

/** What one line of the CLI's stream-json output means for the run's log. */
export type CliEffect =
  | { kind: 'message', data: string }
  | { kind: 'text', text: string, block: boolean }
  | { kind: 'block' }
  | { kind: 'result', line: CliResultLine }

/** Lines that belong to the SDK's conversation with the CLI, not to the run: never shown to clients. */
const PROTOCOL_TYPES = new Set(['control_request', 'control_response', 'control_cancel_request', 'keep_alive'])

interface CliLine {
  type?: unknown
  sdk_host_only?: unknown
  message?: { content?: unknown }
  event?: { type?: unknown, content_block?: { type?: unknown }, delta?: { type?: unknown, text?: unknown } }
}

/**
 * The pure mapping from one parsed CLI line to the run's events: the line itself as a `message`
 * (`shown` is the text clients get: the line verbatim, or a preview of an oversized one), the
 * assistant's text as `text` pieces (whole blocks, or deltas with `include_partial_messages`, where
 * `block` marks the start of a new text block), and the final `result`. Control traffic between
 * the SDK and the CLI maps to nothing.
 */
export function mapCliLine (msg: unknown, shown: string, includePartialMessages: boolean): CliEffect[] {
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) return []
  const line = msg as CliLine
  if ((typeof line.type === 'string' && PROTOCOL_TYPES.has(line.type)) || line.sdk_host_only === true) return []
  // A hint to an interactive UI (a claimed warm spare sends them): nothing a run's client uses.
  if (line.type === 'system' && (msg as { subtype?: unknown }).subtype === 'ui_invalidate') return []
  const effects: CliEffect[] = [{ kind: 'message', data: shown }]
  if (line.type === 'result') {
    effects.push({ kind: 'result', line: msg as CliResultLine })
  } else if (line.type === 'stream_event') {
    const ev = line.event
    if (ev?.type === 'content_block_start' && ev.content_block?.type === 'text') effects.push({ kind: 'block' })
    else if (ev?.type === 'content_block_delta' && ev.delta?.type === 'text_delta' && typeof ev.delta.text === 'string') {
      effects.push({ kind: 'text', text: ev.delta.text, block: false })
    }
  } else if (line.type === 'assistant' && !includePartialMessages && Array.isArray(line.message?.content)) {
    for (const b of line.message.content as Array<{ type?: unknown, text?: unknown }>) {
      if (b?.type === 'text' && typeof b.text === 'string' && b.text.length > 0) effects.push({ kind: 'text', text: b.text, block: true })
    }
  }
  return effects
}

/**
 * The CLI lines the Agent SDK needs to drive the CLI: its control traffic (initialize, permission
 * and hook requests, interrupt answers), system lines and the result. The run's content (assistant,
 * user, stream_event lines) is ours alone: the SDK is spared parsing it a second time.
 */
export function sdkNeeds (msg: unknown): boolean {
  if (msg === null || typeof msg !== 'object') return false
  const type = (msg as { type?: unknown }).type
  return type === 'result' || type === 'system' || (typeof type === 'string' && PROTOCOL_TYPES.has(type))
}
