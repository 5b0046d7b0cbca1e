import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { InvalidRequest, RunNotFound, withProblem } from '../src/domain/errors.js'
import { executeRequestSchema } from '../src/schemas/execute.js'
import { problemResponses, startRunProblems } from '../src/schemas/problem.js'
import { RunEventsQuerySchema, RunListQuerySchema, RunListSchema, RunParamsSchema, type Run } from '../src/schemas/runs.js'
import type { RunRecord } from '../src/domain/records.js'

const security: Array<Record<string, string[]>> = [{ ApiKeyAuth: [] }, { BearerAuth: [] }]
const runRef = Type.Unsafe<Run>(Type.Ref('Run'))
const iso = (ms: number | null): string | null => ms === null ? null : new Date(ms).toISOString()

/** A stored run as the API shows it; the live handle (if any) knows the queue position. */
async function view (r: RunRecord, read: FastifyInstance['runs']): Promise<Run> {
  const live = read.live(r.id)
  const status = live !== undefined && !live.isFinished() ? live.status : r.status
  return {
    id: r.id,
    status,
    queue_position: status === 'queued' ? (await read.queuePosition(r.id)) || null : null,
    session_id: r.sessionId,
    working_directory: r.workingDirectory,
    key_name: r.keyName,
    created_at: iso(r.createdAt)!,
    started_at: iso(r.startedAt),
    ended_at: iso(r.endedAt),
    request: r.request,
    result: r.result,
    events_url: `/api/runs/${r.id}/events`,
    pending_approvals: await read.pendingApprovals(r.id),
    webhook: typeof r.request.webhook_url === 'string'
      ? {
          url: r.request.webhook_url,
          deliveries: (await read.deliveries(r.id)).map(d => ({ event: d.event ?? 'run.finished', attempt: d.attempt, attempted_at: iso(d.attemptedAt)!, status_code: d.statusCode, error: d.error, duration_ms: d.durationMs }))
        }
      : null
  }
}

/** In lists, a field whose JSON is larger than this is shortened (strings) or left out. */
export const LIST_FIELD_BYTES = 2048

/**
 * A run as lists show it: every `request` and `result` field larger than `LIST_FIELD_BYTES` is
 * cut (strings) or left out (objects), and named in `abridged`, so a page of a hundred runs stays
 * small whatever the runs hold. The run's own view has them whole.
 */
function abridge (run: Run): Run {
  const abridged: string[] = []
  const big = (v: unknown): boolean => v !== undefined && v !== null && JSON.stringify(v).length > LIST_FIELD_BYTES
  const cut = (v: string): string => v.slice(0, LIST_FIELD_BYTES)
  const request: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(run.request)) {
    if (!big(v)) request[k] = v
    else {
      abridged.push(`request.${k}`)
      if (typeof v === 'string') request[k] = cut(v)
    }
  }
  let result = run.result
  if (result !== null) {
    result = { ...result }
    if (big(result.output)) { result.output = cut(result.output); abridged.push('result.output') }
    if (result.error !== null && big(result.error)) { result.error = cut(result.error); abridged.push('result.error') }
    if (big(result.structured_output)) { result.structured_output = null; abridged.push('result.structured_output') }
    if (big(result.permission_denials)) { result.permission_denials = []; abridged.push('result.permission_denials') }
  }
  return { ...run, request, result, abridged }
}

const EVENTS_DESCRIPTION = `The run's event log as Server-Sent Events: from the start, or after \`Last-Event-ID\` (or
\`?after=N\`), then live until the terminal \`result\` event, after which the stream ends. Events are
\`run\`, \`message\`, \`text\` and \`result\`, as on \`/api/execute/stream\`, each with its \`id\`. A client that
reconnects with the last id it saw gets every later event exactly once. Works for finished runs
(replay) and for any number of listeners. Listening never affects the run: disconnecting does not
cancel it.`

/** The runs API: durable runs with their own ids and event logs. */
/**
 * Finds a run the request may see (`read`) or change (`write`): a key sees only its own runs,
 * unless it is an admin key; `runs:read_all` reads every run but changes none but its own.
 */
export function runFinder (fastify: FastifyInstance) {
  return async (request: FastifyRequest, id: string, access: 'read' | 'write' = 'read'): Promise<RunRecord> => {
    const r = await fastify.runs.get(id)
    const all = access === 'read' ? fastify.readsAllRuns(request) : fastify.isAdmin(request)
    if (r === undefined || (!all && r.keyName !== request.apiKeyName)) throw new RunNotFound(`no run ${id}`)
    return r
  }
}

const runs: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, engine, runs: read } = fastify
  const find = runFinder(fastify)

  fastify.post('/runs', {
    bodyLimit: config.maxBodyBytes,
    config: { scope: 'runs:write' },
    schema: {
      tags: ['runs'],
      summary: 'Start a run',
      description: 'Accepts the `/api/execute` body and answers at once with `202` and the run (`queued` or `running`); its `Location` is the run. The run goes on whether or not anyone listens, and survives the client: follow it at `events_url`, poll it, or cancel it.',
      operationId: 'createRun',
      security,
      body: executeRequestSchema(config),
      response: {
        202: { ...runRef, description: 'Accepted: the run is queued or running.', headers: { Location: { type: 'string', description: 'The run\'s URL.' } } },
        ...startRunProblems
      }
    }
  }, async (request, reply) => {
    if (request.body.stream === true) {
      throw withProblem(new InvalidRequest('stream has no meaning here: follow the run at its events_url'), {
        problem: { errors: [{ path: '/stream', message: 'must be false; follow events_url instead' }] }
      })
    }
    const handle = await fastify.startRun(request, request.body, false)
    return await reply.code(202).header('location', `/api/runs/${handle.id}`).send(await view(await find(request, handle.id), read))
  })

  fastify.get('/runs', {
    config: { scope: 'runs:read' },
    schema: {
      tags: ['runs'],
      summary: 'List runs',
      description: 'Newest first, filtered by `status` and `session_id` (keys with `admin` or `runs:read_all` see every key\'s runs and may filter by `key_name`; other keys see only their own), a page at a time (`cursor`). Fields larger than 2 KiB (a long prompt, an `output_schema`, a long output) are cut short or left out and named in each run\'s `abridged`; `getRun` has them whole.',
      operationId: 'listRuns',
      security,
      querystring: RunListQuerySchema,
      response: { 200: RunListSchema, 400: problemResponses[400], 401: problemResponses[401] }
    }
  }, async (request) => {
    const { status, session_id: sessionId, limit = 20, cursor } = request.query
    const page = await read.list({
      limit: limit + 1,
      ...(status !== undefined ? { status } : {}),
      ...(sessionId !== undefined ? { sessionId: sessionId.toLowerCase() } : {}),
      ...(cursor !== undefined ? { before: Number(cursor) } : {}),
      ...(!fastify.readsAllRuns(request)
        ? { keyName: request.apiKeyName ?? '' }
        : request.query.key_name !== undefined ? { keyName: request.query.key_name } : {})
    })
    const more = page.length > limit
    const shown = page.slice(0, limit)
    return { runs: await Promise.all(shown.map(async r => abridge(await view(r, read)))), next_cursor: more ? String(shown.at(-1)!.rowid) : null }
  })

  fastify.get('/runs/:id', {
    config: { scope: 'runs:read' },
    schema: {
      tags: ['runs'],
      summary: 'Get a run',
      description: 'Its status (`queued | running | succeeded | failed | timed_out | cancelled | interrupted`), queue position while queued, timestamps, and once ended the same result object `/api/execute` returns.',
      operationId: 'getRun',
      security,
      params: RunParamsSchema,
      response: { 200: { ...runRef, description: 'The run.' }, 400: problemResponses[400], 401: problemResponses[401], 404: problemResponses[404] }
    }
  }, async (request) => await view(await find(request, request.params.id.toLowerCase()), read))

  fastify.post('/runs/:id/cancel', {
    config: { scope: 'runs:write' },
    schema: {
      tags: ['runs'],
      summary: 'Cancel a run',
      description: 'Cancels a queued or running run (its whole process tree is killed) and answers once it has ended. Idempotent: an ended run is returned as it is.',
      operationId: 'cancelRun',
      security,
      params: RunParamsSchema,
      response: { 200: { ...runRef, description: 'The run, ended.' }, 400: problemResponses[400], 401: problemResponses[401], 404: problemResponses[404] }
    }
  }, async (request) => {
    const id = request.params.id.toLowerCase()
    await find(request, id, 'write')
    await engine.cancel(id, 'cancelled through the API')
    return await view(await find(request, id), read)
  })

  fastify.get('/runs/:id/events', {
    config: { scope: 'runs:read' },
    schema: {
      tags: ['runs'],
      summary: 'Follow a run\'s events (SSE)',
      description: EVENTS_DESCRIPTION,
      operationId: 'runEvents',
      security,
      params: RunParamsSchema,
      querystring: RunEventsQuerySchema,
      headers: Type.Object({ 'last-event-id': Type.Optional(Type.String({ pattern: '^[0-9]+$', description: 'The last event id received; the stream resumes after it.' })) }),
      response: {
        200: {
          description: 'An event stream: every event after the given id, ending with `result`.',
          content: { 'text/event-stream': { schema: Type.String() } }
        },
        400: problemResponses[400],
        401: problemResponses[401],
        404: problemResponses[404]
      }
    }
  }, async (request, reply) => {
    const id = request.params.id.toLowerCase()
    await find(request, id)
    const header = request.headers['last-event-id']
    const after = request.query.after ?? (header !== undefined ? Number(header) : 0)
    await reply.streamRun(id, after)
  })
}

export default runs
