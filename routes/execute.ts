import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { InvalidRequest, withProblem } from '../src/domain/errors.js'
import { executeRequestSchema, type ExecuteResult } from '../src/schemas/execute.js'
import { startRunProblems } from '../src/schemas/problem.js'

const security: Array<Record<string, string[]>> = [{ ApiKeyAuth: [] }, { BearerAuth: [] }]

const STREAM_DESCRIPTION = `The same run as \`POST /api/execute\`, streamed as Server-Sent Events. Each event has an increasing \`id\`:

| event | data |
|---|---|
| \`run\` | first: \`{ run_id, session_id, working_directory }\` |
| \`message\` | each line the CLI printed in stream-json, verbatim (\`system\`, \`assistant\`, \`user\`, \`stream_event\`, \`result\`, …; unknown types pass through) |
| \`text\` | \`{ "text": "…" }\` for each piece of assistant text |
| \`result\` | last, exactly once: the same object \`/api/execute\` returns; then the stream ends |

A comment line (\`: keep-alive\`) is sent at least every 15 s. If the client disconnects before the end, the
run is cancelled and its process tree killed. Validation, auth and capacity errors are answered as ordinary
problem+json responses before the stream starts.`

/** `POST /api/execute` and `POST /api/execute/stream`. */
const execute: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config } = fastify
  const body = executeRequestSchema(config)
  const resultRef = Type.Unsafe<ExecuteResult>(Type.Ref('ExecuteResult', { description: 'The run ended (successfully or not): see `success`, `status` and `error_code`.' }))
  const errors = startRunProblems

  fastify.post('/execute', {
    bodyLimit: config.maxBodyBytes,
    config: { scope: 'runs:write' },
    schema: {
      tags: ['execute'],
      summary: 'Run Claude Code to completion',
      description: 'Runs the prompt with the Claude Code CLI and answers when it has ended. `200` whenever the run was started, whether it succeeded or not: read `success`, `status` and `error_code`. If the client disconnects first, the run is cancelled.',
      operationId: 'execute',
      security,
      body,
      response: { 200: resultRef, ...errors }
    }
  }, async (request, reply) => {
    if (request.body.stream === true) {
      throw withProblem(new InvalidRequest('stream must be false on /api/execute; use POST /api/execute/stream for a streamed run'), {
        problem: { errors: [{ path: '/stream', message: 'must be false here; use /api/execute/stream' }] }
      })
    }
    const handle = await fastify.startRun(request, request.body, true)
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) handle.cancel('client disconnected')
    })
    await handle.result
    // The result as already serialized for the run's log: a 10 MB output is not serialized twice.
    return await reply.type('application/json; charset=utf-8').send(handle.resultJson)
  })

  fastify.post('/execute/stream', {
    bodyLimit: config.maxBodyBytes,
    config: { scope: 'runs:write' },
    schema: {
      tags: ['execute'],
      summary: 'Run Claude Code, streamed as Server-Sent Events',
      description: STREAM_DESCRIPTION,
      operationId: 'executeStream',
      security,
      body,
      response: {
        200: {
          description: 'An event stream: `run`, then `message` and `text` events, then exactly one `result`.',
          content: { 'text/event-stream': { schema: Type.String({ description: 'text/event-stream frames (`id:`, `event:`, `data:`)' }) } }
        },
        ...errors
      }
    }
  }, async (request, reply) => {
    // Throws 4xx/503 here, before anything is streamed: those stay ordinary problem responses.
    const handle = await fastify.startRun(request, request.body, true)
    await reply.streamRun(handle.id, 0, { onClientGone: () => handle.cancel('client disconnected') })
  })
}

export default execute
