import { Type, type Static } from '@sinclair/typebox'

/** RFC 9457 problem details, as every error response of the API carries them. */
export const ProblemSchema = Type.Object({
  type: Type.String({ description: 'A URI reference for the problem type; `about:blank` when the title says it all.' }),
  title: Type.String({ description: 'The HTTP status phrase.' }),
  status: Type.Integer(),
  detail: Type.String({ description: 'One human sentence saying what went wrong and, where useful, what to do.' }),
  code: Type.String({ description: 'Stable machine-readable code, e.g. `invalid_request`, `working_directory_forbidden`, `session_directory_mismatch`, `capacity_exceeded`.' }),
  request_id: Type.String({ description: 'Quote it to find the request in the server log.' }),
  errors: Type.Optional(Type.Array(Type.Object({
    path: Type.String({ description: 'JSON pointer to the offending field, e.g. `/timeout`.' }),
    message: Type.String()
  }), { description: 'Validation failures, one per offending field.' })),
  spent_usd: Type.Optional(Type.Number({ description: 'With `budget_exceeded`: what the key spent today (UTC).' })),
  daily_budget_usd: Type.Optional(Type.Number({ description: 'With `budget_exceeded`: the key\'s daily budget.' }))
}, { $id: 'Problem', title: 'Problem', description: 'RFC 9457 problem details (`application/problem+json`).' })
export type Problem = Static<typeof ProblemSchema>

const ref = Type.Ref('Problem')
const p = (description: string) => ({ description, content: { 'application/problem+json': { schema: ref } } })

/** Problem responses shared by routes; spread the ones a route can give into its `response`. */
export const problemResponses = {
  400: p('Invalid request: a field is missing, malformed or unknown (see `errors`).'),
  401: { ...p('Missing or wrong API key.'), headers: { 'WWW-Authenticate': { type: 'string', description: 'Bearer and ApiKey challenges.' } } },
  403: p('Refused by policy: directory outside the allowed roots, env var or permission mode not allowed.'),
  404: p('No such run (or it was deleted by retention).'),
  409: p('The session was created in another directory than the one named.'),
  412: p('`If-Match` no longer names the file (`precondition_failed`): it changed since it was read.'),
  413: p('Request body too large.'),
  416: p('The range asked for lies beyond the file (`range_not_satisfiable`).'),
  429: { ...p('Capacity full: too many runs running and queued. See `Retry-After`.'), headers: { 'Retry-After': { type: 'integer', description: 'Seconds to wait before retrying.' } } },
  500: p('Internal error; the body carries only the `request_id`.'),
  503: p('The server is shutting down, its run store is unavailable, or no agent identity can be had for the key (`agent_identity_unavailable`).')
} as const

/** The problem responses a request that starts a run can get. */
export const startRunProblems = {
  400: problemResponses[400],
  401: problemResponses[401],
  403: problemResponses[403],
  409: problemResponses[409],
  413: problemResponses[413],
  429: problemResponses[429],
  500: problemResponses[500],
  503: problemResponses[503]
} as const
