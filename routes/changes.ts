import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { problemResponses } from '../src/schemas/problem.js'
import { RunParamsSchema } from '../src/schemas/runs.js'
import { InsufficientScope } from '../src/domain/errors.js'
import { ChangesNotRecorded } from '../src/workspace/changes.js'
import { runFinder } from './runs.js'

const security: Array<Record<string, string[]>> = [{ ApiKeyAuth: [] }, { BearerAuth: [] }]
/** The most a diff answers with (`X-Diff-Truncated: true` past it). */
const MAX_DIFF_BYTES = 16 * 1024 * 1024

const FileChangeSchema = Type.Object({
  path: Type.String({ description: 'Relative to the run\'s working directory.' }),
  change: Type.Union([Type.Literal('added'), Type.Literal('modified'), Type.Literal('deleted')]),
  size_before: Type.Union([Type.Integer(), Type.Null()]),
  size_after: Type.Union([Type.Integer(), Type.Null()])
})
const ChangesSchema = Type.Object({
  working_directory: Type.String(),
  files: Type.Array(FileChangeSchema),
  truncated: Type.Boolean({ description: 'More files changed than one answer lists (10,000).' })
})
const RevertedSchema = Type.Object({ working_directory: Type.String(), files: Type.Array(FileChangeSchema, { description: 'The files put back.' }) })
const notRecorded = { ...problemResponses[409], description: 'Nothing recorded for this run (`changes_not_recorded`: recording off, git missing, another instance ran it), it has not ended (`run_not_ended`), or (revert) a later change touched its files (`changed_since`, with `paths`).' }

/**
 * A run's changes to its working directory: the list, a unified diff, and their revert. Recorded
 * before and after each run (`src/workspace/snapshots.ts`), whether or not the directory is a
 * git repository.
 */
const changes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { engine } = fastify
  const find = runFinder(fastify)
  const recorder = (): NonNullable<typeof engine.changes> => {
    if (engine.changes === undefined) throw new ChangesNotRecorded('this server does not record what runs change (RUN_CHANGES=off, or git is missing)')
    return engine.changes
  }

  fastify.get('/runs/:id/changes', {
    config: { scope: 'runs:read' },
    schema: {
      tags: ['files'],
      summary: 'What a run changed',
      description: 'The files the run added, modified or deleted in its working directory, with their sizes. With `Accept: text/x-diff`, a unified diff instead (text files; binary ones named; at most 16 MiB, `X-Diff-Truncated: true` past it): the run\'s own key\'s or an admin\'s (it shows file contents).',
      operationId: 'getRunChanges',
      security,
      params: RunParamsSchema,
      response: {
        200: {
          description: 'The changes.',
          content: { 'application/json': { schema: ChangesSchema }, 'text/x-diff': { schema: Type.String() } }
        },
        400: problemResponses[400],
        401: problemResponses[401],
        403: { ...problemResponses[403], description: 'A diff of another key\'s run, without `admin` (`insufficient_scope`).' },
        404: problemResponses[404],
        409: notRecorded
      }
    }
  }, async (request, reply) => {
    const run = await find(request, request.params.id.toLowerCase())
    const accept = request.headers.accept ?? ''
    if (/text\/x-(diff|patch)/.test(accept)) {
      // A diff is file contents: the run's own key's (or an admin's), not a dashboard's.
      if (run.keyName !== request.apiKeyName && !fastify.isAdmin(request)) throw new InsufficientScope(`the diff of run ${run.id} shows its files: only its own key or an admin reads it (the list of changed files is yours to read)`)
      const diff = await recorder().diff(run.id, MAX_DIFF_BYTES)
      return await reply.type('text/x-diff; charset=utf-8').header('x-diff-truncated', String(diff.truncated)).send(diff.text)
    }
    return await reply.send(await recorder().list(run.id))
  })

  fastify.post('/runs/:id/revert', {
    config: { scope: 'runs:write' },
    schema: {
      tags: ['files'],
      summary: 'Revert what a run changed',
      description: 'Puts the files the run changed back as they were before it (added ones removed), recorded as a `files_reverted` event of the run. Refused whole with `409 changed_since` when any of them changed again since the run ended.',
      operationId: 'revertRunChanges',
      security,
      params: RunParamsSchema,
      response: { 200: RevertedSchema, 400: problemResponses[400], 401: problemResponses[401], 404: problemResponses[404], 409: notRecorded }
    }
  }, async (request) => {
    const run = await find(request, request.params.id.toLowerCase(), 'write')
    return await engine.revertChanges(run.id)
  })
}

export default changes
