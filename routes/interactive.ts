import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { allows } from '../src/auth/keys.js'
import { RunNotFound } from '../src/domain/errors.js'
import { checkAttachments } from '../src/domain/attachments.js'
import type { UserTurn } from '../src/domain/run.js'
import { problemResponses } from '../src/schemas/problem.js'
import { RunParamsSchema } from '../src/schemas/runs.js'
import {
  ApprovalAnswerSchema, ApprovalListQuerySchema, ApprovalListSchema, ApprovalParamsSchema, approvalView, type Approval,
  InterruptAcceptedSchema, interruptSchema, MessageAcceptedSchema, messageSchema
} from '../src/schemas/interactive.js'
import { runFinder } from './runs.js'

const security: Array<Record<string, string[]>> = [{ ApiKeyAuth: [] }, { BearerAuth: [] }]
const approvalRef = Type.Unsafe<Approval>(Type.Ref('Approval'))
const conflict = (what: string) => ({ ...problemResponses[409], description: what })
const queueFull = {
  ...problemResponses[429],
  description: 'The run already has `MAX_QUEUED_MESSAGES` messages waiting for its agent, or their text and images would pass `MAX_QUEUED_MESSAGE_BYTES` (`message_queue_full`); a message leaves the queue when the agent takes it. Also the key\'s `rate_limited`. See `Retry-After`.'
}

/**
 * Interactive runs: the approvals of `approvals: ask` runs, follow-up messages and interrupts.
 * Answering an approval takes `runs:write` on the run's own key, or `approvals:write` on a run
 * the key may read (its own, or any with `runs:read_all`), or `admin`.
 */
const interactive: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, engine, approvals } = fastify
  const find = runFinder(fastify)
  const turn = (body: { prompt: string, attachments?: UserTurn['attachments'] }): UserTurn => {
    const attachments = checkAttachments(body.attachments)
    return { prompt: body.prompt, ...(attachments !== undefined && attachments.length > 0 ? { attachments } : {}) }
  }

  fastify.get('/runs/:id/approvals', {
    config: { scope: ['runs:read', 'approvals:write'] },
    schema: {
      tags: ['approvals'],
      summary: 'List a run\'s approvals',
      description: 'Every permission request of the run, oldest first: pending, allowed or denied.',
      operationId: 'listRunApprovals',
      security,
      params: RunParamsSchema,
      response: { 200: ApprovalListSchema, 400: problemResponses[400], 401: problemResponses[401], 404: problemResponses[404] }
    }
  }, async (request) => {
    const id = request.params.id.toLowerCase()
    await find(request, id)
    return { approvals: (await approvals.list({ runId: id, limit: 1000 })).map(approvalView) }
  })

  fastify.post('/runs/:id/approvals/:approval_id', {
    config: { scope: ['runs:write', 'approvals:write'] },
    schema: {
      tags: ['approvals'],
      summary: 'Answer an approval',
      description: 'Allow (optionally with `updated_input`, or `always` to stop asking for this tool in the session) or deny (with a `message` the model reads) a pending permission request. The agent goes on at once.',
      operationId: 'answerApproval',
      security,
      params: ApprovalParamsSchema,
      body: ApprovalAnswerSchema,
      response: {
        200: { ...approvalRef, description: 'The approval, answered.' },
        400: problemResponses[400],
        401: problemResponses[401],
        403: problemResponses[403],
        404: { ...problemResponses[404], description: 'No such run or approval (`run_not_found`, `approval_not_found`).' },
        409: conflict('Already answered, timed out, or ended with its run (`approval_resolved`).')
      }
    }
  }, async (request) => {
    const id = request.params.id.toLowerCase()
    const key = request.apiKey
    // approvals:write answers what the key may read; runs:write only the key's own runs.
    const mayDecideForOthers = key === null || allows(key, 'admin') || (allows(key, 'approvals:write') && fastify.readsAllRuns(request))
    const run = await find(request, id, mayDecideForOthers ? 'read' : 'write')
    if (!mayDecideForOthers && run.keyName !== request.apiKeyName) throw new RunNotFound(`no run ${id}`)
    const body = request.body
    const record = await engine.answerApproval(id, request.params.approval_id.toLowerCase(), {
      decision: body.decision,
      by: request.apiKeyName ?? null,
      ...(body.message !== undefined ? { message: body.message } : {}),
      ...(body.updated_input !== undefined ? { updatedInput: body.updated_input } : {}),
      ...(body.always !== undefined ? { always: body.always } : {})
    })
    return approvalView(record)
  })

  fastify.get('/approvals', {
    config: { scope: ['runs:read', 'approvals:write'] },
    schema: {
      tags: ['approvals'],
      summary: 'List approvals across runs',
      description: 'For dashboards and bots: the approvals of every run the key may read (its own; every key\'s with `runs:read_all` or `admin`), oldest first, filtered by `status` (e.g. `pending`).',
      operationId: 'listApprovals',
      security,
      querystring: ApprovalListQuerySchema,
      response: { 200: ApprovalListSchema, 400: problemResponses[400], 401: problemResponses[401] }
    }
  }, async (request) => {
    const { status, limit = 100 } = request.query
    const all = fastify.readsAllRuns(request)
    const list = await approvals.list({ limit, ...(status !== undefined ? { status } : {}), ...(all ? {} : { keyName: request.apiKeyName ?? '' }) })
    return { approvals: list.map(approvalView) }
  })

  fastify.post('/runs/:id/messages', {
    bodyLimit: config.maxBodyBytes,
    config: { scope: 'runs:write' },
    schema: {
      tags: ['runs'],
      summary: 'Send a follow-up message to a live run',
      description: 'Queues a user turn (text and images) for the run\'s agent: handed over, in order, once its current turn is answered, logged as `user_message`. The run ends only after the agent has answered every accepted message. At most `MAX_QUEUED_MESSAGES` messages (and `MAX_QUEUED_MESSAGE_BYTES` of them) wait at once: beyond, `429 message_queue_full` with `Retry-After`. An ended run: `409 run_finished` (start a new run with its `session_id`).',
      operationId: 'sendRunMessage',
      security,
      params: RunParamsSchema,
      body: messageSchema(config.maxPromptChars),
      response: {
        202: { ...MessageAcceptedSchema, description: 'Accepted: the agent will answer it.' },
        400: problemResponses[400],
        401: problemResponses[401],
        404: problemResponses[404],
        409: conflict('The run has ended (`run_finished`).'),
        413: problemResponses[413],
        429: queueFull
      }
    }
  }, async (request, reply) => {
    const id = request.params.id.toLowerCase()
    await find(request, id, 'write')
    const messageId = await engine.message(id, turn(request.body))
    return await reply.code(202).send({ message_id: messageId, status: 'queued' as const })
  })

  fastify.post('/runs/:id/interrupt', {
    bodyLimit: config.maxBodyBytes,
    config: { scope: 'runs:write' },
    schema: {
      tags: ['runs'],
      summary: 'Interrupt a run\'s current turn',
      description: 'Stops the agent\'s current turn through the CLI\'s own interrupt (its commands stop, the session stays consistent and resumable), unlike cancel, which kills the process tree. Without `prompt` the run then ends as `cancelled`; with one, that prompt is the next turn and the run goes on. If the CLI does not stop within `KILL_GRACE_MS`, the tree is killed. A prompt waits with the run\'s messages and counts against their limits (`429 message_queue_full`, nothing interrupted). An ended run: `409 run_finished`.',
      operationId: 'interruptRun',
      security,
      params: RunParamsSchema,
      body: interruptSchema(config.maxPromptChars),
      response: {
        202: { ...InterruptAcceptedSchema, description: 'The interrupt is on its way.' },
        400: problemResponses[400],
        401: problemResponses[401],
        404: problemResponses[404],
        409: conflict('The run has ended (`run_finished`).'),
        413: problemResponses[413],
        429: queueFull
      }
    },
    // A bodiless POST (plain curl -X POST) is an interrupt without a prompt.
    preValidation: async (request) => { request.body ??= {} }
  }, async (request, reply) => {
    const id = request.params.id.toLowerCase()
    await find(request, id, 'write')
    const body = request.body
    await engine.interrupt(id, body.prompt === undefined ? undefined : turn({ ...body, prompt: body.prompt }))
    return await reply.code(202).send({ run_id: id, status: 'interrupting' as const })
  })
}

export default interactive
