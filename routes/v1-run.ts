import { Type } from '@sinclair/typebox'
import { Ajv } from 'ajv'
import addFormats from 'ajv-formats'
import { InvalidRequest, withProblem } from '../src/domain/errors.js'
import type { Attachment, PermissionMode, RunRequest, RunResult } from '../src/domain/run.js'
import type { Turn } from '../src/openai/messages.js'
import { executeRequestSchema, type RequestLimits } from '../src/schemas/execute.js'
import { paramOf } from './v1.js'

/**
 * A run request made from an OpenAI request, checked as `/api/runs` checks one (prompt size,
 * images, output schema); a 400 names the OpenAI parameter it came from (`from`: the run's field
 * to OpenAI's).
 */
export function runChecker (limits: RequestLimits, from: Record<string, string>): (run: RunRequest) => void {
  const ok = addFormats.default(new Ajv({ allErrors: false, strict: false })).compile(executeRequestSchema(limits))
  return (run) => {
    if (ok(run)) return
    const e = ok.errors?.[0]
    const field = paramOf(e?.instancePath ?? '')
    const top = field.split(/[.[]/)[0] ?? field
    const param = from[top] ?? field
    throw withProblem(new InvalidRequest(`${param}: ${e?.message ?? 'is invalid'}`), { problem: { param } })
  }
}

const OpenAiErrorSchema = Type.Object({
  error: Type.Object({ message: Type.String(), type: Type.String(), param: Type.Union([Type.String(), Type.Null()]), code: Type.Union([Type.String(), Type.Null()]) })
}, { description: 'An error in OpenAI\'s shape.' })

/** The error responses of a `/v1` route, for its schema: OpenAI's error shape at each status. */
export function openAiErrors (statuses: number[]): Record<number, typeof OpenAiErrorSchema & { description: string }> {
  return Object.fromEntries(statuses.map(s => [s, { ...OpenAiErrorSchema, description: `An error in OpenAI's shape (${s}).` }]))
}

/** The trailing `tool` turns of a conversation: the client's outputs of calls a run parked. */
export function trailingToolTurns (turns: Turn[]): Turn[] {
  let k = turns.length
  while (k > 0 && turns[k - 1]?.role === 'tool') k--
  return turns.slice(k)
}

/**
 * The run an OpenAI request goes on with: the one it started, or the parked one its function
 * outputs resume (from the event it parked at). `finished`: the result of a run started here.
 */
export interface OpenAiRun { runId: string, after: number, cancel: (reason: string) => void, finished?: () => Promise<RunResult> }

/** A parked run, handed the client's outputs of its calls: it goes on under its own id. */
export function resumeParked (engine: { answerToolCall: (runId: string, callId: string, output: string) => boolean, cancel: (runId: string, reason: string) => Promise<boolean> }, parked: { runId: string, after: number }, answers: Turn[]): OpenAiRun {
  const { runId, after } = parked
  for (const t of answers) engine.answerToolCall(runId, t.toolCallId ?? '', t.text)
  return { runId, after, cancel: reason => { void engine.cancel(runId, reason).catch(() => {}) } }
}

/** A run just started for the request. */
export function startedRun (handle: { id: string, cancel: (reason: string) => void, result: Promise<unknown>, resultJson: string }): OpenAiRun {
  return {
    runId: handle.id,
    after: 0,
    cancel: reason => { handle.cancel(reason) },
    finished: async () => {
      await handle.result
      return JSON.parse(handle.resultJson) as RunResult
    }
  }
}

/**
 * The run request of an OpenAI request's new turns: the system text appended (and, for
 * `json_object`, an instruction to answer with one), in the session it resumes (its directory) or
 * in the request's `working_directory`. Client tools are added after the check (`runChecker`).
 */
export function runRequestOf (o: {
  prompt: string
  images: Attachment[]
  system: string | undefined
  jsonObject: boolean
  model: string | undefined
  resume: { sessionId: string, workingDirectory: string } | undefined
  workingDirectory: string | undefined
  permissionMode: PermissionMode | undefined
  schema: Record<string, unknown> | undefined
  stream: boolean
}): RunRequest {
  const appended = [o.system, o.jsonObject ? 'Answer with one JSON object and nothing else.' : undefined].filter(s => s !== undefined).join('\n\n')
  return {
    prompt: o.prompt,
    ...(o.images.length > 0 ? { attachments: o.images } : {}),
    ...(appended !== '' ? { append_system_prompt: appended } : {}),
    ...(o.model !== undefined ? { model: o.model } : {}),
    ...(o.resume !== undefined
      ? { session_id: o.resume.sessionId, working_directory: o.resume.workingDirectory }
      : o.workingDirectory !== undefined ? { working_directory: o.workingDirectory } : {}),
    ...(o.permissionMode !== undefined ? { permission_mode: o.permissionMode } : {}),
    ...(o.schema !== undefined ? { output_schema: o.schema } : {}),
    include_partial_messages: o.stream
  }
}
