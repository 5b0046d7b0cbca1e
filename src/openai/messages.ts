import { createHash } from 'node:crypto'
import type { Attachment } from '../domain/run.js'
import { InvalidRequest, withProblem } from '../domain/errors.js'

// OpenAI's chat messages as the server reads them: the conversation's turns, the system text, the
// images, and the fingerprint that finds the Claude session a conversation continues.

/** A content part of a chat message, as clients send them. */
export type ContentPart =
  | { type: 'text', text: string }
  | { type: 'image_url', image_url: { url: string, detail?: string } }
  | { type: string, [k: string]: unknown }

export interface ToolCall { id: string, type: 'function', function: { name: string, arguments: string } }

/** One message of `messages`, loosely typed: clients send many shapes of it. */
export interface ChatMessage {
  role: 'system' | 'developer' | 'user' | 'assistant' | 'tool' | 'function'
  content?: string | ContentPart[] | null
  name?: string
  tool_calls?: ToolCall[]
  tool_call_id?: string
}

/** A turn of the conversation as the server keeps it: its role, its text, its images. */
export interface Turn {
  role: 'user' | 'assistant' | 'tool'
  text: string
  images: Attachment[]
  /** A tool message: the call it answers. */
  toolCallId?: string
  /** An assistant message: the function calls it made. */
  toolCalls?: ToolCall[]
}

const MEDIA = ['image/png', 'image/jpeg', 'image/gif', 'image/webp'] as const

const bad = (param: string, message: string): Error => withProblem(new InvalidRequest(message), { problem: { param } })

/** An `image_url` data URL as an attachment; anything else is a 400 naming where it is. */
function imageOf (url: string, param: string): Attachment {
  const m = /^data:([a-z]+\/[a-z0-9.+-]+);base64,([A-Za-z0-9+/=\s]+)$/i.exec(url)
  if (m === null) throw bad(param, `${param}: only data: URLs of base64 images (png, jpeg, gif, webp) are accepted; the server does not fetch images`)
  const media = (m[1] ?? '').toLowerCase()
  if (!(MEDIA as readonly string[]).includes(media)) throw bad(param, `${param}: ${media} is not an image type the model reads (png, jpeg, gif, webp)`)
  return { type: 'image', media_type: media as Attachment['media_type'], data: (m[2] ?? '').replace(/\s+/g, '') }
}

/** The text and images of a message's content. */
function contentOf (content: ChatMessage['content'], param: string): { text: string, images: Attachment[] } {
  if (content === undefined || content === null) return { text: '', images: [] }
  if (typeof content === 'string') return { text: content, images: [] }
  if (!Array.isArray(content)) throw bad(`${param}.content`, `${param}.content must be text or a list of content parts`)
  const texts: string[] = []
  const images: Attachment[] = []
  content.forEach((part, j) => {
    if (typeof part !== 'object' || part === null) throw bad(`${param}.content[${j}]`, `${param}.content[${j}] must be a content part ({ type, … })`)
    if (part.type === 'text') {
      if (typeof part.text !== 'string') throw bad(`${param}.content[${j}].text`, `${param}.content[${j}].text must be text`)
      texts.push(part.text)
    } else if (part.type === 'image_url') {
      const url = (part as { image_url?: { url?: unknown } }).image_url?.url
      if (typeof url !== 'string') throw bad(`${param}.content[${j}].image_url.url`, `${param}.content[${j}].image_url.url is required`)
      images.push(imageOf(url, `${param}.content[${j}].image_url`))
    } else throw bad(`${param}.content[${j}].type`, `${param}.content[${j}]: content parts of type ${String(part.type)} are not supported (text, image_url)`)
  })
  return { text: texts.join('\n'), images }
}

/** The system text (system and developer messages, in order) and the turns of a conversation. */
export function readMessages (messages: ChatMessage[]): { system: string | undefined, turns: Turn[] } {
  const system: string[] = []
  const turns: Turn[] = []
  messages.forEach((m, i) => {
    const param = `messages[${i}]`
    const { text, images } = contentOf(m.content, param)
    switch (m.role) {
      case 'system':
      case 'developer':
        if (images.length > 0) throw bad(`${param}.content`, `${param}: a ${m.role} message carries text only`)
        system.push(text)
        break
      case 'user':
        turns.push({ role: 'user', text, images })
        break
      case 'assistant':
        (m.tool_calls ?? []).forEach((c, j) => {
          const ok = typeof c === 'object' && c !== null && typeof c.id === 'string' && typeof c.function?.name === 'string' && typeof c.function.arguments === 'string'
          if (!ok) throw bad(`${param}.tool_calls[${j}]`, `${param}.tool_calls[${j}] needs an id and a function with a name and arguments (text)`)
        })
        turns.push({ role: 'assistant', text, images: [], ...(m.tool_calls !== undefined && m.tool_calls.length > 0 ? { toolCalls: m.tool_calls } : {}) })
        break
      case 'tool':
      case 'function':
        if (m.role === 'tool' && typeof m.tool_call_id !== 'string') throw bad(`${param}.tool_call_id`, `${param}.tool_call_id is required for a tool message`)
        turns.push({ role: 'tool', text, images: [], ...(m.tool_call_id !== undefined ? { toolCallId: m.tool_call_id } : {}) })
        break
      default:
        throw bad(`${param}.role`, `${param}.role must be system, developer, user, assistant or tool`)
    }
  })
  if (turns.length === 0) throw bad('messages', 'messages must hold at least one user message')
  return { system: system.length > 0 ? system.join('\n\n') : undefined, turns }
}

/**
 * The fingerprints of a conversation after each of its turns (`[k]`: up to and including turn k),
 * in one pass: what it said, not how it was formatted (roles, texts, images by their digest, tool
 * calls). Equal histories, equal prints.
 */
export function prefixPrints (system: string | undefined, turns: Turn[]): string[] {
  const h = createHash('sha256')
  h.update(JSON.stringify(['system', system ?? '']))
  return turns.map(t => {
    h.update(JSON.stringify([t.role, t.text.trim(), t.images.map(i => createHash('sha256').update(i.data).digest('hex')), t.toolCallId ?? '', (t.toolCalls ?? []).map(c => [c.id, c.function?.name, c.function?.arguments])]))
    return h.copy().digest('hex')
  })
}

/** A conversation's fingerprint up to and including its last turn. */
export function fingerprint (system: string | undefined, turns: Turn[]): string {
  return prefixPrints(system, turns).at(-1) ?? createHash('sha256').update(JSON.stringify(['system', system ?? ''])).digest('hex')
}

/**
 * The first prompt of a new session for a conversation that has earlier turns the server did not
 * answer (or answered in a session that has moved on): they are carried as a transcript, the new
 * turns after them.
 */
export function promptWithHistory (earlier: Turn[], next: Turn[]): string {
  const said = (t: Turn): string => {
    if (t.role === 'tool') return `Tool result${t.toolCallId !== undefined ? ` (${t.toolCallId})` : ''}: ${t.text}`
    const calls = (t.toolCalls ?? []).map(c => `[called ${c.function.name}(${c.function.arguments})]`).join(' ')
    return `${t.role === 'user' ? 'User' : 'Assistant'}: ${[t.text, calls].filter(Boolean).join(' ')}${t.images.length > 0 ? ` [${t.images.length} image(s)]` : ''}`
  }
  const now = next.map(t => t.role === 'user' ? t.text : said(t)).join('\n\n')
  if (earlier.length === 0) return now
  return `This conversation began before this session; its earlier turns were:\n\n${earlier.map(said).join('\n\n')}\n\nThe user now says:\n\n${now}`
}
