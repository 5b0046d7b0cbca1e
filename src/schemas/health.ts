import { Type, type Static } from '@sinclair/typebox'

/** `GET /health`: never spawns a process; the CLI probe is cached and refreshed in the background. */
export const HealthSchema = Type.Object({
  status: Type.Union([Type.Literal('healthy'), Type.Literal('degraded'), Type.Literal('shutting_down')]),
  version: Type.String({ description: 'This server\'s version.' }),
  claude_code_available: Type.Boolean(),
  claude_code_version: Type.Union([Type.String(), Type.Null()]),
  uptime_s: Type.Number(),
  runs: Type.Object({ active: Type.Integer(), queued: Type.Integer() })
}, { title: 'Health' })
export type Health = Static<typeof HealthSchema>
