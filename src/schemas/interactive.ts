import { Type, type Static } from '@sinclair/typebox'
import type { ApprovalRecord } from '../domain/records.js'
import { AttachmentsSchema, NO_NUL } from './execute.js'

const Timestamp = Type.String({ format: 'date-time' })
const Nullable = <T extends ReturnType<typeof Type.String>>(t: T) => Type.Union([t, Type.Null()])

/** An approval as the API shows it. */
export const ApprovalSchema = Type.Object({
  approval_id: Type.String({ format: 'uuid' }),
  run_id: Type.String({ format: 'uuid' }),
  key_name: Type.Union([Type.String(), Type.Null()], { description: 'The key of the run.' }),
  status: Type.Union([Type.Literal('pending'), Type.Literal('allowed'), Type.Literal('denied')]),
  tool_name: Type.String(),
  input: Type.Unknown({ description: 'The tool\'s input as the agent wants to call it.' }),
  tool_use_id: Nullable(Type.String()),
  agent_id: Nullable(Type.String({ description: 'The subagent that asked, if one did.' })),
  title: Nullable(Type.String({ description: 'The CLI\'s own question, e.g. "Claude wants to write notes.txt".' })),
  description: Nullable(Type.String()),
  suggestions: Type.Union([Type.Array(Type.Unknown()), Type.Null()], { description: 'What the CLI suggests for "always allow".' }),
  created_at: Timestamp,
  expires_at: Timestamp,
  resolved_at: Type.Union([Timestamp, Type.Null()]),
  decision_reason: Type.Union([Type.Literal('answered'), Type.Literal('timed_out'), Type.Literal('run_ended'), Type.Null()]),
  decided_by: Nullable(Type.String({ description: 'The key that answered.' })),
  message: Nullable(Type.String({ description: 'With a deny: what the model is told.' }))
}, { $id: 'Approval', title: 'Approval' })
export type Approval = Static<typeof ApprovalSchema>

const iso = (ms: number): string => new Date(ms).toISOString()

export function approvalView (a: ApprovalRecord): Approval {
  return {
    approval_id: a.id,
    run_id: a.runId,
    key_name: a.keyName,
    status: a.status,
    tool_name: a.toolName,
    input: a.input,
    tool_use_id: a.toolUseId,
    agent_id: a.agentId,
    title: a.title,
    description: a.description,
    suggestions: a.suggestions,
    created_at: iso(a.createdAt),
    expires_at: iso(a.expiresAt),
    resolved_at: a.resolvedAt === null ? null : iso(a.resolvedAt),
    decision_reason: a.decisionReason,
    decided_by: a.decidedBy,
    message: a.message
  }
}

export const ApprovalListSchema = Type.Object({
  approvals: Type.Array(Type.Unsafe<Approval>(Type.Ref('Approval')))
}, { title: 'ApprovalList' })

export const ApprovalParamsSchema = Type.Object({
  id: Type.String({ format: 'uuid', description: 'The run id.' }),
  approval_id: Type.String({ format: 'uuid' })
})

export const ApprovalAnswerSchema = Type.Object({
  decision: Type.Union([Type.Literal('allow'), Type.Literal('deny')]),
  message: Type.Optional(Type.String({ minLength: 1, maxLength: 10_000, description: 'With `deny`: what the model reads as the reason (it may try another way).' })),
  updated_input: Type.Optional(Type.Object({}, { additionalProperties: true, description: 'With `allow`: the input the tool runs with instead.' })),
  always: Type.Optional(Type.Boolean({ description: 'With `allow`: also allow this tool for the rest of the session (the CLI\'s suggestion), so it is not asked again.' }))
}, { additionalProperties: false })

export const ApprovalListQuerySchema = Type.Object({
  status: Type.Optional(Type.Union([Type.Literal('pending'), Type.Literal('allowed'), Type.Literal('denied')])),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 100 }))
}, { additionalProperties: false })

export function messageSchema (maxPromptChars: number) {
  return Type.Object({
    prompt: Type.String({ minLength: 1, maxLength: maxPromptChars, pattern: NO_NUL, description: 'The next user turn for the agent (no NUL character).' }),
    attachments: Type.Optional(AttachmentsSchema)
  }, { additionalProperties: false })
}

export function interruptSchema (maxPromptChars: number) {
  return Type.Object({
    prompt: Type.Optional(Type.String({ minLength: 1, maxLength: maxPromptChars, pattern: NO_NUL, description: 'The turn to go on with instead; without it the run ends as `cancelled` (no NUL character).' })),
    attachments: Type.Optional(AttachmentsSchema)
  }, { additionalProperties: false })
}

export const MessageAcceptedSchema = Type.Object({
  message_id: Type.String({ format: 'uuid' }),
  status: Type.Literal('queued')
}, { title: 'MessageAccepted' })

export const InterruptAcceptedSchema = Type.Object({
  run_id: Type.String({ format: 'uuid' }),
  status: Type.Literal('interrupting')
}, { title: 'InterruptAccepted' })
