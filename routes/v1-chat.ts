import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { Type } from '@sinclair/typebox'
import type { OutgoingHttpHeaders } from 'node:http'
import { InvalidRequest, withProblem } from '../src/domain/errors.js'
import { DEFAULT_MODEL, modelIds, runModel } from '../src/openai/models.js'
import { PERMISSION_MODES, type RunResult } from '../src/domain/run.js'
import { openEventStream, type SseWriter } from '../src/sse.js'
import { chunkOf, completionOf, contentOf, created, failureOf, finishReasonOf, usageOf } from '../src/openai/chat.js'
import { ConversationIndex } from '../src/openai/conversations.js'
import { clientToolsOf, followSegment, ParkedCalls, type FunctionCall } from '../src/openai/functions.js'
import { promptWithHistory, readMessages, type ChatMessage, type Turn } from '../src/openai/messages.js'
import { openAiErrors, resumeParked, runChecker, runRequestOf, startedRun, trailingToolTurns, type OpenAiRun } from './v1-run.js'

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
  /** Calls of the client's functions that runs parked, until the client's outputs come. */
  const parked = new ParkedCalls()
  const follow = engine.follow.bind(engine)

  /**
   * A fork of a conversation's session cut after the answer a branch leaves it at (the last
   * assistant message of the run that gave it); undefined when it cannot be made (the branch then
   * starts a new session that carries the earlier turns).
   */
  const forkAt = async (request: FastifyRequest, branch: { sessionId: string, runId: string }): Promise<{ sessionId: string, workingDirectory: string } | undefined> => {
    try {
      let uuid: string | undefined
      await follow(branch.runId, 0, e => {
        if (e.type === 'message') {
          const m = JSON.parse(e.data) as { type?: unknown, uuid?: unknown }
          if (m.type === 'assistant' && typeof m.uuid === 'string') uuid = m.uuid
        }
        return true
      }, async () => {}, AbortSignal.timeout(10_000))
      if (uuid === undefined) return undefined
      const forked = await fastify.sessions.fork(branch.sessionId, { keyName: request.apiKeyName ?? null, all: fastify.isAdmin(request) }, { upToMessageUuid: uuid })
      return { sessionId: forked.id, workingDirectory: forked.workingDirectory }
    } catch (err) {
      request.log.info({ err, session: branch.sessionId }, 'chat completion: the branch could not fork its session; a new one carries its turns')
      return undefined
    }
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
    const clientTools = clientToolsOf(body.tools, body.tool_choice, 'chat')
    const { system, turns } = readMessages(body.messages as ChatMessage[])
    const last = turns.at(-1)
    if (last?.role === 'assistant') throw withProblem(new InvalidRequest('the last message must be the user\'s (or a tool\'s), not the assistant\'s'), { problem: { param: `messages[${body.messages.length - 1}].role` } })
    const key = request.apiKeyName ?? '-'
    const format = body.response_format
    const schema = format?.type === 'json_schema' ? format.json_schema?.schema : undefined
    if (format?.type === 'json_schema' && schema === undefined) throw withProblem(new InvalidRequest('response_format.json_schema.schema is required'), { problem: { param: 'response_format.json_schema.schema' } })
    const structured = schema !== undefined
    const at = created()

    // The client's outputs of calls a run parked: that run goes on from there, under its own id.
    const answers = trailingToolTurns(turns)
    const parkedRun = parked.take(key, answers.map(t => t.toolCallId ?? ''))
    let live: OpenAiRun
    if (parkedRun !== undefined) live = resumeParked(engine, parkedRun, answers)
    else {
      const c = conversations.continuation(key, system, turns)
      // A branch of a conversation continues a fork of its session, cut where the branch leaves it.
      const resume = c.resume ?? (c.branched !== undefined ? await forkAt(request, c.branched) : undefined)
      const run = runRequestOf({
        prompt: resume !== undefined ? promptOf(c.next) : promptWithHistory(c.earlier, c.next),
        images: c.next.flatMap(t => t.images),
        system,
        jsonObject: format?.type === 'json_object',
        model,
        resume,
        workingDirectory: body.working_directory,
        permissionMode: body.permission_mode,
        schema,
        stream: body.stream === true
      })
      checkRun(run)
      if (clientTools.length > 0) run.client_tools = clientTools
      request.log.debug({ conversation: c.resume !== undefined ? 'resumed' : resume !== undefined ? 'forked' : 'new' }, 'chat completion')
      live = startedRun(await fastify.startRun(request, run, true))
    }
    const { runId, after, cancel, finished } = live

    /** Remember the conversation as answered, so its next request continues the session. */
    const remember = async (r: RunResult): Promise<void> => {
      if (r.session_id === null) return
      const stored = await fastify.runs.get(r.run_id).catch(() => undefined)
      if (stored === undefined || stored === null) return
      conversations.answered(key, system, turns, { role: 'assistant', text: contentOf(r, structured), images: [] }, r.session_id, stored.workingDirectory, r.run_id)
    }
    /** The completion of a segment that ended in calls of the client's functions: the run parks. */
    const callsCompletion = (calls: FunctionCall[], text: string): Record<string, unknown> => ({
      id: runId,
      object: 'chat.completion',
      created: at,
      model: body.model,
      choices: [{ index: 0, message: { role: 'assistant', content: text === '' ? null : text, refusal: null, tool_calls: calls.map(c => ({ id: c.call_id, type: 'function', function: { name: c.name, arguments: c.arguments } })) }, finish_reason: 'tool_calls', logprobs: null }],
      usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 },
      system_fingerprint: null
    })

    if (body.stream !== true) {
      reply.header('x-run-id', runId)
      reply.raw.on('close', () => {
        if (!reply.raw.writableFinished) cancel('client disconnected')
      })
      let r: RunResult | undefined
      let text = ''
      let sessionId: string | null = null
      if (finished !== undefined && clientTools.length === 0) r = await finished()
      else {
        // A run offered the client's functions: its next calls, or its end.
        const seg = await followSegment(follow, runId, after, e => {
          if (e.type === 'run') sessionId = (JSON.parse(e.data) as { session_id?: string }).session_id ?? null
          if (e.type === 'text') text += (JSON.parse(e.data) as { text: string }).text
          return true
        }, async () => {})
        if (seg.calls.length > 0) {
          parked.park(key, runId, seg.calls, seg.after)
          if (sessionId !== null) reply.header('x-session-id', sessionId)
          return await reply.type('application/json; charset=utf-8').send(JSON.stringify(callsCompletion(seg.calls, text)))
        }
        if (seg.result === undefined) throw new Error('the run ended without a result')
        r = seg.result
      }
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
      if (!complete) cancel('client disconnected')
    })
    const includeUsage = body.stream_options?.include_usage === true
    const open = (sessionId: string | null): SseWriter => {
      const w = openEventStream(raw, { ...reply.getHeaders(), 'x-run-id': runId, ...(sessionId !== null ? { 'x-session-id': sessionId } : {}) } as OutgoingHttpHeaders, config.sseKeepAliveMs)
      w.frame(JSON.stringify(chunkOf(runId, body.model, at, { role: 'assistant', content: '' })))
      return w
    }
    let sentText = false
    const seg = await followSegment(follow, runId, after, e => {
      if (e.type === 'run') {
        sse ??= open((JSON.parse(e.data) as { session_id?: string }).session_id ?? null)
        return true
      }
      sse ??= open(null)
      if (e.type === 'text') {
        if (structured) return true
        sentText = true
        return sse.frame(JSON.stringify(chunkOf(runId, body.model, at, { content: (JSON.parse(e.data) as { text: string }).text })))
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
        if (content !== '') sse.frame(JSON.stringify(chunkOf(runId, body.model, at, { content })))
      }
      sse.frame(JSON.stringify(chunkOf(runId, body.model, at, {}, finishReasonOf(r))))
      if (includeUsage) sse.frame(JSON.stringify(chunkOf(runId, body.model, at, {}, null, usageOf(r))))
      void remember(r)
      return true
    }, async () => await sse?.drained(), gone.signal).catch((err: unknown) => {
      // The run's events could not be read to the end (the store failed): say so, and end the stream.
      request.log.error({ err }, 'chat completion stream: following the run failed')
      sse ??= open(null)
      sse.frame(JSON.stringify({ error: { message: 'the run\'s events could not be read; GET /api/runs/' + runId + ' shows it', type: 'server_error', param: null, code: 'store_unavailable' } }))
      return undefined
    })
    sse ??= open(null)
    if (seg !== undefined && seg.calls.length > 0 && seg.complete) {
      parked.park(key, runId, seg.calls, seg.after)
      sse.frame(JSON.stringify(chunkOf(runId, body.model, at, { tool_calls: seg.calls.map((c, index) => ({ index, id: c.call_id, type: 'function', function: { name: c.name, arguments: c.arguments } })) })))
      sse.frame(JSON.stringify(chunkOf(runId, body.model, at, {}, 'tool_calls')))
      if (includeUsage) sse.frame(JSON.stringify(chunkOf(runId, body.model, at, {}, null, { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 })))
    }
    complete = seg?.complete ?? false
    sse.frame('[DONE]')
    sse.end()
  })
}

export default chat
