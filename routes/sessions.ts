import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { Type } from '@sinclair/typebox'
import type { Viewer } from '../src/sessions/catalog.js'
import { problemResponses } from '../src/schemas/problem.js'
import {
  SessionForkSchema, SessionListQuerySchema, SessionListSchema, SessionParamsSchema, SessionPatchSchema,
  TranscriptQuerySchema, TranscriptSchema, sessionView, type Session
} from '../src/schemas/sessions.js'

const security: Array<Record<string, string[]>> = [{ ApiKeyAuth: [] }, { BearerAuth: [] }]
const sessionRef = Type.Unsafe<Session>(Type.Ref('Session'))
const notFound = { ...problemResponses[404], description: 'No such session, deleted, or another key\'s (`session_not_found`).' }

/**
 * The sessions API: every Claude session the key's runs created, its transcript, and what can be
 * done to it without running anything (rename, fork, delete). Reading takes `runs:read` (every
 * key's sessions with `runs:read_all`); changing takes `runs:write` (any key's with `admin`).
 */
const sessions: FastifyPluginAsyncTypebox = async (fastify) => {
  const catalog = fastify.sessions
  const reader = (request: FastifyRequest): Viewer => ({ keyName: request.apiKeyName ?? null, all: fastify.readsAllRuns(request) })
  const writer = (request: FastifyRequest): Viewer => ({ keyName: request.apiKeyName ?? null, all: fastify.isAdmin(request) })

  fastify.get('/sessions', {
    config: { scope: 'runs:read' },
    schema: {
      tags: ['sessions'],
      summary: 'List sessions',
      description: 'The sessions of the key\'s runs (every key\'s with `runs:read_all` or `admin`), most recently active first, optionally only those of one `working_directory`, a page at a time (`cursor`).',
      operationId: 'listSessions',
      security,
      querystring: SessionListQuerySchema,
      response: { 200: SessionListSchema, 400: problemResponses[400], 401: problemResponses[401] }
    }
  }, async (request) => {
    const { working_directory: workingDirectory, limit = 20, cursor } = request.query
    const page = await catalog.list(reader(request), { limit, ...(workingDirectory !== undefined ? { workingDirectory } : {}), ...(cursor !== undefined ? { cursor } : {}) })
    return { sessions: page.sessions.map(sessionView), next_cursor: page.nextCursor }
  })

  fastify.get('/sessions/:id', {
    config: { scope: 'runs:read' },
    schema: {
      tags: ['sessions'],
      summary: 'Get a session',
      operationId: 'getSession',
      security,
      params: SessionParamsSchema,
      response: { 200: { ...sessionRef, description: 'The session.' }, 400: problemResponses[400], 401: problemResponses[401], 404: notFound }
    }
  }, async (request) => sessionView(await catalog.find(request.params.id, reader(request))))

  fastify.get('/sessions/:id/messages', {
    config: { scope: 'runs:read' },
    schema: {
      tags: ['sessions'],
      summary: 'Read a session\'s transcript',
      description: 'Its user, assistant and system messages in order, oldest first, a page at a time (`limit`, `cursor`). Empty while its first run has written nothing.',
      operationId: 'getSessionMessages',
      security,
      params: SessionParamsSchema,
      querystring: TranscriptQuerySchema,
      response: {
        200: TranscriptSchema,
        400: problemResponses[400],
        401: problemResponses[401],
        404: notFound,
        409: { ...problemResponses[409], description: 'The transcript cannot be read (`transcript_unreadable`: too large, or not a plain file).' }
      }
    }
  }, async (request) => {
    const { limit = 100, cursor } = request.query
    const page = await catalog.messages(request.params.id, reader(request), { limit, ...(cursor !== undefined ? { cursor } : {}) })
    return { messages: page.messages, next_cursor: page.nextCursor }
  })

  fastify.patch('/sessions/:id', {
    config: { scope: 'runs:write' },
    schema: {
      tags: ['sessions'],
      summary: 'Rename a session',
      operationId: 'renameSession',
      security,
      params: SessionParamsSchema,
      body: SessionPatchSchema,
      response: { 200: { ...sessionRef, description: 'The session, renamed.' }, 400: problemResponses[400], 401: problemResponses[401], 403: problemResponses[403], 404: notFound }
    }
  }, async (request) => sessionView(await catalog.rename(request.params.id, writer(request), request.body.title.trim())))

  fastify.post('/sessions/:id/fork', {
    config: { scope: 'runs:write' },
    schema: {
      tags: ['sessions'],
      summary: 'Fork a session',
      description: 'A new session with this one\'s transcript (up to `up_to_message_uuid`, inclusive), in the same directory and for the same key; nothing runs. Continue it with a run naming its `session_id`; the original is not changed.',
      operationId: 'forkSession',
      security,
      params: SessionParamsSchema,
      body: SessionForkSchema,
      response: {
        201: { ...sessionRef, description: 'The new session.', headers: { Location: { type: 'string', description: 'The new session\'s URL.' } } },
        400: problemResponses[400],
        401: problemResponses[401],
        403: problemResponses[403],
        404: notFound,
        409: { ...problemResponses[409], description: 'Nothing to fork yet (`session_empty`), or the transcript cannot be read (`transcript_unreadable`).' }
      }
    },
    // A bodiless POST (plain curl -X POST) forks the whole session.
    preValidation: async (request) => { request.body ??= {} }
  }, async (request, reply) => {
    const body = request.body
    const forked = await catalog.fork(request.params.id, writer(request), {
      ...(body.up_to_message_uuid !== undefined ? { upToMessageUuid: body.up_to_message_uuid } : {}),
      ...(body.title !== undefined ? { title: body.title.trim() } : {})
    })
    return await reply.code(201).header('location', `/api/sessions/${forked.id}`).send(sessionView(forked))
  })

  fastify.delete('/sessions/:id', {
    config: { scope: 'runs:write' },
    schema: {
      tags: ['sessions'],
      summary: 'Delete a session',
      description: 'Deletes its transcript; its runs stay in the run store until retention prunes them. Refused while a run of it is queued or running (`409 session_busy`): cancel it or wait.',
      operationId: 'deleteSession',
      security,
      params: SessionParamsSchema,
      response: {
        204: { type: 'null', description: 'Deleted.' },
        400: problemResponses[400],
        401: problemResponses[401],
        403: problemResponses[403],
        404: notFound,
        409: { ...problemResponses[409], description: 'A run of it is queued or running (`session_busy`).' }
      }
    }
  }, async (request, reply) => {
    await catalog.delete(request.params.id, writer(request))
    return await reply.code(204).send()
  })
}

export default sessions
