import { Type, type Static } from '@sinclair/typebox'
import { titleOf, type TranscriptMessage } from '../sessions/catalog.js'
import type { SessionRecord } from '../domain/records.js'

const Timestamp = Type.String({ format: 'date-time' })

/** A Claude session as the API shows it. */
export const SessionSchema = Type.Object({
  session_id: Type.String({ format: 'uuid' }),
  working_directory: Type.String({ description: 'Where it was created: its runs resume there.' }),
  title: Type.Union([Type.String(), Type.Null()], { description: 'The title it was given (rename, fork), else the start of its first prompt.' }),
  created_at: Timestamp,
  updated_at: Timestamp,
  key_name: Type.Union([Type.String(), Type.Null()], { description: 'The API key it belongs to.' }),
  run_count: Type.Integer({ minimum: 0, description: 'Its runs the run store still holds (retention prunes old ones).' }),
  last_run_id: Type.Union([Type.String({ format: 'uuid' }), Type.Null()]),
  busy: Type.Boolean({ description: 'A run of it is queued or running.' })
}, { $id: 'Session', title: 'Session' })
export type Session = Static<typeof SessionSchema>

const sessionRef = Type.Unsafe<Session>(Type.Ref('Session'))

export const SessionListSchema = Type.Object({
  sessions: Type.Array(sessionRef),
  next_cursor: Type.Union([Type.String(), Type.Null()], { description: 'Pass as `cursor` for the next (less recently active) page; null on the last page.' })
}, { title: 'SessionList' })

export const SessionListQuerySchema = Type.Object({
  working_directory: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, description: 'Only the sessions created in this directory (its real path, as runs report it).' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 20 })),
  cursor: Type.Optional(Type.String({ maxLength: 200, description: 'From `next_cursor` of the previous page.' }))
}, { additionalProperties: false })

export const SessionParamsSchema = Type.Object({
  id: Type.String({ format: 'uuid', description: 'The session id.' })
})

export const TranscriptQuerySchema = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
  cursor: Type.Optional(Type.String({ pattern: '^[0-9]{1,9}$', description: 'From `next_cursor` of the previous page.' }))
}, { additionalProperties: false })

export const TranscriptSchema = Type.Object({
  messages: Type.Array(Type.Object({
    uuid: Type.String({ description: 'The message\'s id: `up_to_message_uuid` of a fork.' }),
    type: Type.Union([Type.Literal('user'), Type.Literal('assistant'), Type.Literal('system')]),
    message: Type.Unknown({ description: 'The message as the CLI recorded it (for user and assistant: `{ role, content }`, as in the Messages API).' }),
    parent_tool_use_id: Type.Union([Type.String(), Type.Null()], { description: 'Set for the messages of a subagent: the tool call that started it.' }),
    timestamp: Type.Union([Timestamp, Type.Null()])
  })),
  next_cursor: Type.Union([Type.String(), Type.Null()], { description: 'Pass as `cursor` for the next (later) page; null on the last page.' })
}, { title: 'Transcript' })

export const SessionPatchSchema = Type.Object({
  title: Type.String({ minLength: 1, maxLength: 500, pattern: '\\S', description: 'The new title.' })
}, { additionalProperties: false })

export const SessionForkSchema = Type.Object({
  up_to_message_uuid: Type.Optional(Type.String({ minLength: 1, maxLength: 100, description: 'Copy the transcript up to this message (inclusive, a `uuid` from the transcript); all of it when absent.' })),
  title: Type.Optional(Type.String({ minLength: 1, maxLength: 500, pattern: '\\S', description: 'The fork\'s title; `<title> (fork)` when absent.' }))
}, { additionalProperties: false })

const iso = (ms: number): string => new Date(ms).toISOString()

/** A stored session as the API shows it. */
export function sessionView (s: SessionRecord): Session {
  return {
    session_id: s.id,
    working_directory: s.workingDirectory,
    title: titleOf(s),
    created_at: iso(s.createdAt),
    updated_at: iso(s.updatedAt),
    key_name: s.keyName,
    run_count: s.runCount,
    last_run_id: s.lastRunId,
    busy: s.busy
  }
}

export type { TranscriptMessage }
