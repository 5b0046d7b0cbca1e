import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type { FastifyRequest } from 'fastify'
import type { OutgoingHttpHeaders } from 'node:http'
import { DomainError, InvalidRequest, withProblem } from '../src/domain/errors.js'
import { PERMISSION_MODES, type RunResult } from '../src/domain/run.js'
import type { RunRecord } from '../src/domain/records.js'
import { openEventStream, type SseWriter } from '../src/sse.js'
import { promptWithHistory } from '../src/openai/messages.js'
import { DEFAULT_MODEL, runModel } from '../src/openai/models.js'
import { callsResponseOf, functionCallItem, imagesOf, outputMessage, readInput, responseOf, type InputItem, type ResponseRequest } from '../src/openai/responses.js'
import { clientToolsOf, followSegment, ParkedCalls } from '../src/openai/functions.js'
import { openAiErrors, resumeParked, runChecker, runRequestOf, startedRun, trailingToolTurns, type OpenAiRun } from './v1-run.js'

const security: Array<Record<string, string[]>> = [{ BearerAuth: [] }, { ApiKeyAuth: [] }]
const Open = { additionalProperties: true }

const ResponseRequestSchema = Type.Object({
  model: Type.String({ minLength: 1, description: 'A model from `GET /v1/models`; `claude-code` for the server\'s default.' }),
  input: Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.Object({}, Open), { minItems: 1, maxItems: 1000 })], { description: 'Text, or message items (`input_text`, `input_image` as a data URL).' }),
  instructions: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  previous_response_id: Type.Optional(Type.Union([Type.String({ format: 'uuid' }), Type.Null()], { description: 'Continue that response\'s Claude session (its working directory, tools and context).' })),
  stream: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  background: Type.Optional(Type.Union([Type.Boolean(), Type.Null()], { description: 'Answer at once (`queued`); the run goes on without the client: `GET /v1/responses/{id}` polls it, `POST /v1/responses/{id}/cancel` cancels it.' })),
  text: Type.Optional(Type.Object({ format: Type.Optional(Type.Object({ type: Type.Union([Type.Literal('text'), Type.Literal('json_object'), Type.Literal('json_schema')]), name: Type.Optional(Type.String()), schema: Type.Optional(Type.Object({}, Open)), strict: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])) }, Open)) }, Open)),
  tools: Type.Optional(Type.Array(Type.Object({ type: Type.String() }, Open))),
  tool_choice: Type.Optional(Type.Unknown()),
  metadata: Type.Optional(Type.Union([Type.Record(Type.String(), Type.String()), Type.Null()])),
  store: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  working_directory: Type.Optional(Type.String({ minLength: 1, description: 'Extension: where a new conversation\'s run executes (as `/api/runs`).' })),
  permission_mode: Type.Optional(Type.Union(PERMISSION_MODES.map(m => Type.Literal(m)), { description: 'Extension: the run\'s permission mode (as `/api/runs`).' }))
}, { ...Open, description: 'OpenAI\'s Responses request. Other fields (temperature, reasoning, …) are accepted and ignored.' })

const ResponseObject = Type.Object({ id: Type.String(), object: Type.Literal('response'), status: Type.String() }, { ...Open, description: 'An OpenAI `response` object; its `id` is the run\'s (`/api/runs/{id}`).' })
const errors = openAiErrors([400, 401, 403, 404, 409, 429, 500, 503])
const IdParams = Type.Object({ id: Type.String({ format: 'uuid' }) })

const notFound = (id: string, param: string | null = null): Error =>
  withProblem(new DomainError('run_not_found', `No response with id ${id}`), { problem: { param } })

/** What a stored run's response echoes of the request that made it. */
function requestOf (run: RunRecord): ResponseRequest {
  const r = run.request
  return {
    model: r.model ?? DEFAULT_MODEL,
    ...(r.append_system_prompt !== undefined ? { instructions: r.append_system_prompt } : {}),
    background: !run.cancelOnDisconnect,
    ...(r.output_schema !== undefined ? { format: { type: 'json_schema', schema: r.output_schema } } : {})
  }
}

/**
 * `POST /v1/responses`, `GET /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`: OpenAI's
 * Responses API on the server's runs. `previous_response_id` continues that response's session.
 */
const responses: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, engine } = fastify
  const checkRun = runChecker(config, { prompt: 'input', attachments: 'input', output_schema: 'text.format', append_system_prompt: 'instructions' })
  /** Calls of the client's functions that runs parked, until its `function_call_output` items come. */
  const parked = new ParkedCalls()
  const follow = engine.follow.bind(engine)

  /**
   * A stored run this key may see (`runs:read_all`: any), or may change (`write`: its own; an
   * admin's: any), or 404.
   */
  const ownRun = async (request: FastifyRequest, id: string, param: string | null = null, write = false): Promise<RunRecord> => {
    const run = await fastify.runs.get(id)
    const mayAll = write ? fastify.isAdmin(request) : fastify.readsAllRuns(request)
    if (run === null || run === undefined || (!mayAll && run.keyName !== request.apiKeyName)) throw notFound(id, param)
    return run
  }

  fastify.post('/responses', {
    bodyLimit: config.maxBodyBytes,
    config: { scope: 'runs:write' },
    schema: {
      tags: ['openai'],
      summary: 'Create a response (OpenAI Responses API)',
      description: 'A run of the Claude Code agent, answered as a `response` (with `stream`, the Responses SSE events; with `background`, at once). Its `id` is the run\'s.',
      operationId: 'openaiCreateResponse',
      security,
      body: ResponseRequestSchema,
      response: {
        200: { description: 'A `response` object, or with `stream: true` an event stream of typed Responses events.', content: { 'application/json': { schema: ResponseObject }, 'text/event-stream': { schema: Type.String() } } },
        ...errors
      }
    }
  }, async (request, reply) => {
    const body = request.body
    // The default needs no list: a request for it never waits for the CLI to be asked.
    const model = body.model === DEFAULT_MODEL ? undefined : runModel(await engine.catalog.models(), body.model)
    const clientTools = clientToolsOf(body.tools as Array<Record<string, unknown>> | undefined, body.tool_choice, 'responses')
    const background = body.background === true
    if (background && body.stream === true) throw withProblem(new InvalidRequest('background and stream together are not supported: poll GET /v1/responses/{id}'), { problem: { param: 'background' } })
    if (background && clientTools.length > 0) throw withProblem(new InvalidRequest('a background response cannot call the client\'s functions: send tools without background'), { problem: { param: 'background' } })
    const instructions = body.instructions ?? undefined
    const { system, turns } = readInput(body.input as string | InputItem[], instructions)
    const key = request.apiKeyName ?? '-'
    const format = body.text?.format
    const schema = format?.type === 'json_schema' ? format.schema : undefined
    if (format?.type === 'json_schema' && schema === undefined) throw withProblem(new InvalidRequest('text.format.schema is required for json_schema'), { problem: { param: 'text.format.schema' } })
    const structured = schema !== undefined
    const echo: ResponseRequest = {
      model: body.model,
      ...(instructions !== undefined ? { instructions } : {}),
      ...(typeof body.previous_response_id === 'string' ? { previousResponseId: body.previous_response_id } : {}),
      background,
      ...(format !== undefined ? { format } : {}),
      ...(body.metadata !== undefined && body.metadata !== null ? { metadata: body.metadata } : {}),
      ...(clientTools.length > 0 ? { tools: body.tools } : {})
    }
    const createdAt = Date.now()

    // `function_call_output` items for calls a run parked: that run goes on, under its own id.
    const answers = trailingToolTurns(turns)
    const parkedRun = parked.take(key, answers.map(t => t.toolCallId ?? ''))
    let live: OpenAiRun
    if (parkedRun !== undefined) live = resumeParked(engine, parkedRun, answers)
    else {
      const previous = typeof body.previous_response_id === 'string' ? await ownRun(request, body.previous_response_id, 'previous_response_id', true) : undefined
      // With a previous response, every input item is new; without one, those before the last user turns came with it.
      let k = previous !== undefined ? 0 : turns.length
      if (previous === undefined) while (k > 0 && turns[k - 1]?.role !== 'assistant') k--
      const next = turns.slice(k)
      const run = runRequestOf({
        prompt: promptWithHistory(turns.slice(0, k), next),
        images: imagesOf(next),
        system,
        jsonObject: format?.type === 'json_object',
        model,
        resume: previous !== undefined ? { sessionId: previous.sessionId, workingDirectory: previous.workingDirectory } : undefined,
        workingDirectory: body.working_directory,
        permissionMode: body.permission_mode,
        schema,
        stream: body.stream === true
      })
      checkRun(run)
      if (clientTools.length > 0) run.client_tools = clientTools
      live = startedRun(await fastify.startRun(request, run, !background))
    }
    const { runId, after, cancel, finished } = live
    reply.header('x-run-id', runId)
    if (background) {
      const stored = await fastify.runs.get(runId)
      return await reply.send(responseOf(runId, createdAt, stored?.status ?? 'queued', null, echo))
    }
    if (body.stream !== true) {
      reply.raw.on('close', () => {
        if (!reply.raw.writableFinished) cancel('client disconnected')
      })
      let r: RunResult
      if (finished !== undefined && clientTools.length === 0) r = await finished()
      else {
        // A run offered the client's functions: its next calls, or its end.
        let text = ''
        const seg = await followSegment(follow, runId, after, e => {
          if (e.type === 'text') text += (JSON.parse(e.data) as { text: string }).text
          return true
        }, async () => {})
        if (seg.calls.length > 0) {
          parked.park(key, runId, seg.calls, seg.after)
          return await reply.send(callsResponseOf(runId, createdAt, text, seg.calls, echo))
        }
        if (seg.result === undefined) throw new Error('the run ended without a result')
        r = seg.result
      }
      if (r.session_id !== null) reply.header('x-session-id', r.session_id)
      return await reply.send(responseOf(runId, createdAt, r.status, r, echo))
    }

    reply.hijack()
    const raw = reply.raw
    const gone = new AbortController()
    let complete = false
    raw.on('close', () => {
      gone.abort()
      if (!complete) cancel('client disconnected')
    })
    let seq = 0
    let sse: SseWriter | undefined
    const send = (type: string, data: Record<string, unknown>): boolean => sse?.frame(JSON.stringify({ type, sequence_number: seq++, ...data }), type) ?? true
    const open = (sessionId: string | null): SseWriter => {
      sse = openEventStream(raw, { ...reply.getHeaders(), ...(sessionId !== null ? { 'x-session-id': sessionId } : {}) } as OutgoingHttpHeaders, config.sseKeepAliveMs)
      send('response.created', { response: responseOf(runId, createdAt, 'queued', null, echo) })
      send('response.in_progress', { response: responseOf(runId, createdAt, 'running', null, echo) })
      return sse
    }
    const item = `msg_${runId}`
    let text = ''
    /** The assistant's message item: not yet, open (its text streaming), or done. */
    let message = 'none' as 'none' | 'open' | 'done'
    const openMessage = (): void => {
      if (message !== 'none') return
      message = 'open'
      send('response.output_item.added', { output_index: 0, item: outputMessage(runId, '', 'in_progress') })
      send('response.content_part.added', { item_id: item, output_index: 0, content_index: 0, part: { type: 'output_text', text: '', annotations: [] } })
    }
    const closeMessage = (): void => {
      if (message !== 'open') return
      message = 'done'
      send('response.output_text.done', { item_id: item, output_index: 0, content_index: 0, text })
      send('response.content_part.done', { item_id: item, output_index: 0, content_index: 0, part: { type: 'output_text', text, annotations: [] } })
      send('response.output_item.done', { output_index: 0, item: outputMessage(runId, text, 'completed') })
    }
    const seg = await followSegment(follow, runId, after, e => {
      if (e.type === 'run') {
        open((JSON.parse(e.data) as { session_id?: string }).session_id ?? null)
        return true
      }
      if (sse === undefined) open(null)
      if (e.type === 'text' && !structured) {
        const delta = (JSON.parse(e.data) as { text: string }).text
        openMessage()
        text += delta
        return send('response.output_text.delta', { item_id: item, output_index: 0, content_index: 0, delta })
      }
      if (e.type !== 'result') return true
      const r = JSON.parse(e.data) as RunResult
      const final = responseOf(runId, createdAt, r.status, r, echo)
      const out = (final.output as Array<{ content: Array<{ text: string }> }>)[0]?.content[0]?.text
      if (out !== undefined) {
        if (message === 'none') {
          openMessage()
          send('response.output_text.delta', { item_id: item, output_index: 0, content_index: 0, delta: out })
        }
        text = out
        closeMessage()
      }
      const status = final.status as string
      send(status === 'completed' ? 'response.completed' : status === 'incomplete' ? 'response.incomplete' : 'response.failed', { response: final })
      return true
    }, async () => await sse?.drained(), gone.signal).catch((err: unknown) => {
      request.log.error({ err }, 'response stream: following the run failed')
      if (sse === undefined) open(null)
      send('error', { code: 'store_unavailable', message: `the run's events could not be read; GET /v1/responses/${runId} shows it`, param: null })
      return undefined
    })
    if (sse === undefined) open(null)
    if (seg !== undefined && seg.calls.length > 0 && seg.complete) {
      // Parked at calls of the client's functions: they close this response.
      parked.park(key, runId, seg.calls, seg.after)
      closeMessage()
      const first = message === 'done' ? 1 : 0
      seg.calls.forEach((c, i) => {
        const fc = functionCallItem(c, 'completed')
        send('response.output_item.added', { output_index: first + i, item: functionCallItem(c, 'in_progress') })
        send('response.function_call_arguments.delta', { item_id: fc.id, output_index: first + i, delta: c.arguments })
        send('response.function_call_arguments.done', { item_id: fc.id, output_index: first + i, name: c.name, arguments: c.arguments })
        send('response.output_item.done', { output_index: first + i, item: fc })
      })
      send('response.completed', { response: callsResponseOf(runId, createdAt, message === 'done' ? text : '', seg.calls, echo) })
    }
    complete = seg?.complete ?? false
    sse?.end()
  })

  fastify.get('/responses/:id', {
    config: { scope: ['runs:read', 'runs:write'] },
    schema: {
      tags: ['openai'],
      summary: 'Get a response (OpenAI Responses API)',
      description: 'The response of a run, as it stands: `queued`, `in_progress`, then `completed`, `failed`, `incomplete` or `cancelled`.',
      operationId: 'openaiGetResponse',
      security,
      params: IdParams,
      response: { 200: ResponseObject, ...errors }
    }
  }, async (request) => {
    const run = await ownRun(request, request.params.id)
    return responseOf(run.id, run.createdAt, run.status, run.result, requestOf(run))
  })

  fastify.post('/responses/:id/cancel', {
    config: { scope: 'runs:write' },
    schema: {
      tags: ['openai'],
      summary: 'Cancel a response (OpenAI Responses API)',
      description: 'Cancel the run of a response (a background one, typically); answers the response once the run has ended.',
      operationId: 'openaiCancelResponse',
      security,
      params: IdParams,
      response: { 200: ResponseObject, ...errors }
    }
  }, async (request) => {
    let run = await ownRun(request, request.params.id, null, true)
    if (run.status === 'queued' || run.status === 'running') {
      await engine.cancel(run.id, 'cancelled through /v1/responses/{id}/cancel')
      const until = Date.now() + 10_000
      while ((run.status === 'queued' || run.status === 'running') && Date.now() < until) {
        await new Promise(resolve => setTimeout(resolve, 50))
        run = await ownRun(request, run.id)
      }
    }
    return responseOf(run.id, run.createdAt, run.status, run.result, requestOf(run))
  })
}

export default responses
