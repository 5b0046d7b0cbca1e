import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type { OutgoingHttpHeaders } from 'node:http'
import { InvalidRequest, withProblem } from '../src/domain/errors.js'
import { DEFAULT_MODEL, modelIds, runModel } from '../src/openai/models.js'
import { PERMISSION_MODES, type ClientTool, type RunRequest, type RunResult } from '../src/domain/run.js'
import { openEventStream, type SseWriter } from '../src/sse.js'
import { chunkOf, completionOf, contentOf, created, failureOf, finishReasonOf, usageOf } from '../src/openai/chat.js'
import { ConversationIndex } from '../src/openai/conversations.js'
import { promptWithHistory, readMessages, type ChatMessage, type Turn } from '../src/openai/messages.js'
import { openAiErrors, runChecker } from './v1-run.js'

const security: Array<Record<string, string[]>> = [{ BearerAuth: [] }, { ApiKeyAuth: [] }]
const Open = { additionalProperties: true }

const ChatMessageSchema = Type.Object({
  role: Type.String({ description: '`system`, `developer`, `user`, `assistant` or `tool`.' }),
  content: Type.Optional(Type.Union([Type.String(), Type.Array(Type.Object({ type: Type.String() }, Open)), Type.Null()])),
  name: Type.Optional(Type.String()),
  tool_calls: Type.Optional(Type.Array(Type.Object({}, Open))),
  tool_call_id: Type.Optional(Type.String())
}, Open)

const ChatRequestSchema = Type.Object({
  model: Type.String({ minLength: 1, description: 'A model from `GET /v1/models`; `claude-code` for the server\'s default.' }),
  messages: Type.Array(ChatMessageSchema, { minItems: 1, maxItems: 1000 }),
  stream: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  stream_options: Type.Optional(Type.Union([Type.Object({ include_usage: Type.Optional(Type.Boolean()) }, Open), Type.Null()])),
  response_format: Type.Optional(Type.Object({
    type: Type.Union([Type.Literal('text'), Type.Literal('json_object'), Type.Literal('json_schema')]),
    json_schema: Type.Optional(Type.Object({ name: Type.Optional(Type.String()), schema: Type.Optional(Type.Object({}, Open)), strict: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])) }, Open))
  }, Open)),
  n: Type.Optional(Type.Union([Type.Integer({ minimum: 1, maximum: 1 }), Type.Null()])),
  tools: Type.Optional(Type.Array(Type.Object({ type: Type.String() }, Open))),
  tool_choice: Type.Optional(Type.Unknown()),
  user: Type.Optional(Type.String()),
  metadata: Type.Optional(Type.Union([Type.Record(Type.String(), Type.String()), Type.Null()])),
  working_directory: Type.Optional(Type.String({ minLength: 1, description: 'Extension: where a new conversation\'s run executes (as `/api/runs`).' })),
  permission_mode: Type.Optional(Type.Union(PERMISSION_MODES.map(m => Type.Literal(m)), { description: 'Extension: the run\'s permission mode (as `/api/runs`).' }))
}, { ...Open, description: 'OpenAI\'s Chat Completions request. Other OpenAI fields (temperature, max_tokens, …) are accepted and ignored: the agent decides.' })

const errors = openAiErrors([400, 401, 403, 404, 429, 500, 503])

/** How long the calls the model made together are gathered before the completion answers them. */
const TOOL_CALL_GATHER_MS = 150

/** The trailing `tool` turns of a conversation: the client's outputs of calls a run parked. */
function trailingToolTurns (turns: Turn[]): Turn[] {
  let k = turns.length
  while (k > 0 && turns[k - 1]?.role === 'tool') k--
  return turns.slice(k)
}

/** OpenAI's `tools` (functions) as the run's client tools; none with `tool_choice: none`. */
function clientToolsOf (tools: Array<Record<string, unknown>> | undefined, choice: unknown): ClientTool[] {
  if (tools === undefined || choice === 'none') return []
  return tools.map((t, i) => {
    const f = t.function as { name?: unknown, description?: unknown, parameters?: unknown } | undefined
    if (t.type !== 'function' || typeof f?.name !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(f.name)) {
      throw withProblem(new InvalidRequest(`tools[${i}]: a function with a name of letters, digits, _ or - (at most 64) is required`), { problem: { param: `tools[${i}]` } })
    }
    return { name: f.name, ...(typeof f.description === 'string' ? { description: f.description } : {}), ...(typeof f.parameters === 'object' && f.parameters !== null ? { parameters: f.parameters as Record<string, unknown> } : {}) }
  })
}

/** Text of the new turns of a conversation that resumes its session. */
function promptOf (next: Turn[]): string {
  return promptWithHistory([], next)
}

/**
 * `GET /v1/models` and `POST /v1/chat/completions`: OpenAI's Chat Completions on the server's runs.
 * A conversation the server answered before continues its Claude session with only its new turns.
 */
const chat: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, engine } = fastify
  const conversations = new ConversationIndex()
  /** Calls of the client's functions that runs parked, by call id (this instance's runs). */
  const parked = new Map<string, { runId: string, key: string, after: number }>()

  /**
   * What a run does from event `after` on, as a completion: its next calls of the client's
   * functions (`finish_reason: tool_calls`, the run parked until the client answers), or its end.
   */
  const segment = async (runId: string, after: number, key: string, model: string): Promise<Record<string, unknown>> => {
    const calls: Array<{ call_id: string, name: string, arguments: string, seq: number }> = []
    let text = ''
    let result: RunResult | undefined
    const stop = new AbortController()
    let timer: NodeJS.Timeout | undefined
    await engine.follow(runId, after, e => {
      if (e.type === 'text') text += (JSON.parse(e.data) as { text: string }).text
      else if (e.type === 'tool_call') {
        calls.push({ ...(JSON.parse(e.data) as { call_id: string, name: string, arguments: string }), seq: e.seq })
        // Calls the model made together arrive together: a moment for the rest.
        timer ??= setTimeout(() => stop.abort(), TOOL_CALL_GATHER_MS)
      } else if (e.type === 'result') result = JSON.parse(e.data) as RunResult
      return true
    }, async () => {}, stop.signal)
    clearTimeout(timer)
    if (result === undefined && calls.length > 0) {
      const last = Math.max(...calls.map(c => c.seq))
      for (const c of calls) parked.set(c.call_id, { runId, key, after: last })
      return {
        id: runId,
        object: 'chat.completion',
        created: created(),
        model,
        choices: [{ index: 0, message: { role: 'assistant', content: text === '' ? null : text, refusal: null, tool_calls: calls.map(c => ({ id: c.call_id, type: 'function', function: { name: c.name, arguments: c.arguments } })) }, finish_reason: 'tool_calls', logprobs: null }],
        usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 },
        system_fingerprint: null
      }
    }
    if (result === undefined) throw new Error('the run ended without a result')
    if (!result.success && finishReasonOf(result) !== 'length') throw Object.assign(new Error(result.error ?? 'the run failed'), { statusCode: 500 })
    return completionOf(result, model, false, created())
  }

  const checkRun = runChecker(config, { prompt: 'messages', attachments: 'messages', output_schema: 'response_format', append_system_prompt: 'messages' })

  fastify.get('/models', {
    config: { scope: ['runs:write', 'runs:read'] },
    schema: {
      tags: ['openai'],
      summary: 'List models (OpenAI)',
      description: 'The models runs may use, as the Claude Code CLI lists them (aliases and the ids they resolve to), and `claude-code` for the server\'s default.',
      operationId: 'openaiListModels',
      security,
      response: {
        200: Type.Object({ object: Type.Literal('list'), data: Type.Array(Type.Object({ id: Type.String(), object: Type.Literal('model'), created: Type.Integer(), owned_by: Type.String() })) }),
        ...errors
      }
    }
  }, async () => {
    return { object: 'list' as const, data: modelIds(await engine.catalog.models()).map(id => ({ id, object: 'model' as const, created: 0, owned_by: id === DEFAULT_MODEL ? 'claude-code-api' : 'anthropic' })) }
  })

  fastify.post('/chat/completions', {
    bodyLimit: config.maxBodyBytes,
    config: { scope: 'runs:write' },
    schema: {
      tags: ['openai'],
      summary: 'Create a chat completion (OpenAI)',
      description: 'A run of the Claude Code agent for the conversation\'s new turns, answered as a `chat.completion` (or, with `stream`, `chat.completion.chunk` events and `data: [DONE]`). The `id` is the run\'s id (`/api/runs/{id}`); `X-Run-Id` and `X-Session-Id` headers. A conversation this key had continues its Claude session.',
      operationId: 'openaiChatCompletion',
      security,
      body: ChatRequestSchema,
      response: {
        200: {
          description: 'A `chat.completion` object, or with `stream: true` an event stream of `chat.completion.chunk` objects ending with `data: [DONE]`.',
          content: {
            'application/json': { schema: Type.Object({ id: Type.String(), object: Type.Literal('chat.completion') }, Open) },
            'text/event-stream': { schema: Type.String() }
          }
        },
        ...errors
      }
    }
  }, async (request, reply) => {
    const body = request.body
    // The default needs no list: a request for it never waits for the CLI to be asked.
    const model = body.model === DEFAULT_MODEL ? undefined : runModel(await engine.catalog.models(), body.model)
    const clientTools = clientToolsOf(body.tools, body.tool_choice)
    if (clientTools.length > 0 && body.stream === true) throw withProblem(new InvalidRequest('tools with stream are not supported yet: send stream: false'), { problem: { param: 'stream' } })
    const { system, turns } = readMessages(body.messages as ChatMessage[])
    const last = turns.at(-1)
    if (last?.role === 'assistant') throw withProblem(new InvalidRequest('the last message must be the user\'s (or a tool\'s), not the assistant\'s'), { problem: { param: `messages[${body.messages.length - 1}].role` } })
    const key = request.apiKeyName ?? '-'
    // The client's answers to calls a run parked: the run goes on from there.
    const answers = trailingToolTurns(turns)
    if (answers.length > 0 && answers.every(t => parked.get(t.toolCallId ?? '')?.key === key)) {
      let runId = ''
      let after = 0
      for (const t of answers) {
        const p = parked.get(t.toolCallId ?? '')!
        parked.delete(t.toolCallId ?? '')
        runId = p.runId
        after = Math.max(after, p.after)
        engine.answerToolCall(p.runId, t.toolCallId ?? '', t.text)
      }
      reply.header('x-run-id', runId)
      return await reply.type('application/json; charset=utf-8').send(JSON.stringify(await segment(runId, after, key, body.model)))
    }
    const c = conversations.continuation(key, system, turns)
    const format = body.response_format
    const schema = format?.type === 'json_schema' ? format.json_schema?.schema : undefined
    if (format?.type === 'json_schema' && schema === undefined) throw withProblem(new InvalidRequest('response_format.json_schema.schema is required'), { problem: { param: 'response_format.json_schema.schema' } })
    const jsonObject = format?.type === 'json_object'
    const images = c.next.flatMap(t => t.images)
    const appended = [system, jsonObject ? 'Answer with one JSON object and nothing else.' : undefined].filter(s => s !== undefined).join('\n\n')
    const run: RunRequest = {
      prompt: c.resume !== undefined ? promptOf(c.next) : promptWithHistory(c.earlier, c.next),
      ...(images.length > 0 ? { attachments: images } : {}),
      ...(appended !== '' ? { append_system_prompt: appended } : {}),
      ...(model !== undefined ? { model } : {}),
      ...(c.resume !== undefined
        ? { session_id: c.resume.sessionId, working_directory: c.resume.workingDirectory }
        : body.working_directory !== undefined ? { working_directory: body.working_directory } : {}),
      ...(body.permission_mode !== undefined ? { permission_mode: body.permission_mode } : {}),
      ...(schema !== undefined ? { output_schema: schema } : {}),
      include_partial_messages: body.stream === true
    }
    checkRun(run)
    if (clientTools.length > 0) run.client_tools = clientTools
    if (body.stream === true) request.log.debug({ conversation: c.resume !== undefined ? 'resumed' : c.branched === true ? 'branched' : 'new' }, 'chat completion')
    const handle = await fastify.startRun(request, run, true)
    const at = created()
    const structured = schema !== undefined
    /** Remember the conversation as answered, so its next request continues the session. */
    const remember = async (r: RunResult): Promise<void> => {
      if (r.session_id === null) return
      const stored = await fastify.runs.get(r.run_id).catch(() => undefined)
      if (stored === undefined || stored === null) return
      conversations.answered(key, system, turns, { role: 'assistant', text: contentOf(r, structured), images: [] }, r.session_id, stored.workingDirectory)
    }

    if (clientTools.length > 0) {
      reply.header('x-run-id', handle.id)
      return await reply.type('application/json; charset=utf-8').send(JSON.stringify(await segment(handle.id, 0, key, body.model)))
    }
    if (body.stream !== true) {
      reply.header('x-run-id', handle.id)
      reply.raw.on('close', () => {
        if (!reply.raw.writableFinished) handle.cancel('client disconnected')
      })
      await handle.result
      const r = JSON.parse(handle.resultJson) as RunResult
      if (r.session_id !== null) reply.header('x-session-id', r.session_id)
      if (!r.success && finishReasonOf(r) !== 'length') {
        const f = failureOf(r)
        return await reply.code(f.status as 200).type('application/json; charset=utf-8').send(JSON.stringify(f.body))
      }
      await remember(r)
      return await reply.type('application/json; charset=utf-8').send(JSON.stringify(completionOf(r, body.model, structured, at)))
    }

    // Streamed: the headers go with the run's first event (it names the session).
    reply.hijack()
    const raw = reply.raw
    let sse: SseWriter | undefined
    const gone = new AbortController()
    let complete = false
    raw.on('close', () => {
      gone.abort()
      if (!complete) handle.cancel('client disconnected')
    })
    const includeUsage = body.stream_options?.include_usage === true
    const open = (sessionId: string | null): SseWriter => {
      const w = openEventStream(raw, { ...reply.getHeaders(), 'x-run-id': handle.id, ...(sessionId !== null ? { 'x-session-id': sessionId } : {}) } as OutgoingHttpHeaders, config.sseKeepAliveMs)
      w.frame(JSON.stringify(chunkOf(handle.id, body.model, at, { role: 'assistant', content: '' })))
      return w
    }
    let sentText = false
    complete = await engine.follow(handle.id, 0, e => {
      if (e.type === 'run') {
        sse ??= open((JSON.parse(e.data) as { session_id?: string }).session_id ?? null)
        return true
      }
      sse ??= open(null)
      if (e.type === 'text') {
        if (structured) return true
        sentText = true
        return sse.frame(JSON.stringify(chunkOf(handle.id, body.model, at, { content: (JSON.parse(e.data) as { text: string }).text })))
      }
      if (e.type !== 'result') return true
      const r = JSON.parse(e.data) as RunResult
      if (!r.success && finishReasonOf(r) !== 'length') {
        sse.frame(JSON.stringify(failureOf(r).body))
        return true
      }
      // Structured output (or a run whose text never streamed) comes whole, in one chunk.
      if (structured || !sentText) {
        const content = contentOf(r, structured)
        if (content !== '') sse.frame(JSON.stringify(chunkOf(handle.id, body.model, at, { content })))
      }
      sse.frame(JSON.stringify(chunkOf(handle.id, body.model, at, {}, finishReasonOf(r))))
      if (includeUsage) sse.frame(JSON.stringify(chunkOf(handle.id, body.model, at, {}, null, usageOf(r))))
      void remember(r)
      return true
    }, async () => await sse?.drained(), gone.signal).catch((err: unknown) => {
      // The run's events could not be read to the end (the store failed): say so, and end the stream.
      request.log.error({ err }, 'chat completion stream: following the run failed')
      sse ??= open(null)
      sse.frame(JSON.stringify({ error: { message: 'the run\'s events could not be read; GET /api/runs/' + handle.id + ' shows it', type: 'server_error', param: null, code: 'store_unavailable' } }))
      return false
    })
    sse ??= open(null)
    sse.frame('[DONE]')
    sse.end()
  })
}

export default chat
