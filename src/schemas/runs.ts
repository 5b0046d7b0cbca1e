import { Type, type Static } from '@sinclair/typebox'
import { RUN_STATUSES, type ExecuteResult } from './execute.js'

const Timestamp = Type.String({ format: 'date-time' })
const resultRef = Type.Unsafe<ExecuteResult>(Type.Ref('ExecuteResult'))

/** A run as `/api/runs` shows it: its state, and its result once it has ended. */
export const RunSchema = Type.Object({
  id: Type.String({ format: 'uuid' }),
  status: Type.Union(RUN_STATUSES.map(s => Type.Literal(s))),
  queue_position: Type.Union([Type.Integer({ minimum: 1 }), Type.Null()], { description: 'While queued, its 1-based place: 1 is next to start (or has its slot and is starting). Null once running or ended.' }),
  session_id: Type.String(),
  working_directory: Type.String(),
  key_name: Type.Union([Type.String(), Type.Null()], { description: 'The API key that started it.' }),
  created_at: Timestamp,
  started_at: Type.Union([Timestamp, Type.Null()]),
  ended_at: Type.Union([Timestamp, Type.Null()]),
  request: Type.Object({}, { additionalProperties: true, description: 'The request as sent, env var values left out.' }),
  result: Type.Union([resultRef, Type.Null()], { description: 'Once ended: the same object `/api/execute` returns.' }),
  events_url: Type.String({ description: 'The run\'s event stream (SSE).' }),
  pending_approvals: Type.Integer({ minimum: 0, description: 'Tool approvals waiting for an answer (`approvals: ask`).' }),
  webhook: Type.Union([Type.Object({
    url: Type.String(),
    deliveries: Type.Array(Type.Object({
      event: Type.String({ description: '`run.finished` or `approval.requested`.' }),
      attempt: Type.Integer({ description: 'Counted per webhook.' }),
      attempted_at: Timestamp,
      status_code: Type.Union([Type.Integer(), Type.Null()]),
      error: Type.Union([Type.String(), Type.Null()]),
      duration_ms: Type.Integer()
    }), { description: 'Every delivery attempt, oldest first.' })
  }), Type.Null()], { description: 'With `webhook_url`: the URL and every delivery attempt.' }),
  abridged: Type.Optional(Type.Array(Type.String(), { description: 'In lists only: the fields larger than 2 KiB, cut short (strings) or left out, e.g. `request.output_schema`, `result.output`. `GET /api/runs/{id}` has them whole.' }))
}, { $id: 'Run', title: 'Run' })
export type Run = Static<typeof RunSchema>

export const RunListSchema = Type.Object({
  runs: Type.Array(Type.Unsafe<Run>(Type.Ref('Run'))),
  next_cursor: Type.Union([Type.String(), Type.Null()], { description: 'Pass as `cursor` for the next (older) page; null on the last page.' })
}, { title: 'RunList' })

export const RunParamsSchema = Type.Object({
  id: Type.String({ format: 'uuid', description: 'The run id.' })
})

export const RunListQuerySchema = Type.Object({
  status: Type.Optional(Type.Union(RUN_STATUSES.map(s => Type.Literal(s)))),
  session_id: Type.Optional(Type.String({ format: 'uuid' })),
  key_name: Type.Optional(Type.String({ description: 'Keys with `admin` or `runs:read_all` only: the runs of this key.' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 20 })),
  cursor: Type.Optional(Type.String({ pattern: '^[0-9]+$', description: 'From `next_cursor` of the previous page.' }))
}, { additionalProperties: false })

export const RunEventsQuerySchema = Type.Object({
  after: Type.Optional(Type.Integer({ minimum: 0, description: 'Send events with an id greater than this (like `Last-Event-ID`).' }))
}, { additionalProperties: false })
