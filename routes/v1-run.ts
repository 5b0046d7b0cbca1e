import { Type } from '@sinclair/typebox'
import { Ajv } from 'ajv'
import addFormats from 'ajv-formats'
import { InvalidRequest, withProblem } from '../src/domain/errors.js'
import type { RunRequest } from '../src/domain/run.js'
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
