import { DomainError, withProblem } from '../domain/errors.js'

/** The alias for the operator's default model (the CLI's own choice). */
export const DEFAULT_MODEL = 'claude-code'

/** A model as the CLI lists it: its alias (or id) and the id it resolves to. */
export interface ListedModel { id: string, resolved?: string }

/** The ids `/v1/models` lists: the default alias, then the CLI's aliases and what they resolve to. */
export function modelIds (listed: ListedModel[]): string[] {
  const ids = new Set<string>([DEFAULT_MODEL])
  for (const m of listed) {
    if (m.id !== 'default') ids.add(m.id)
    if (m.resolved !== undefined) ids.add(m.resolved)
  }
  return [...ids]
}

/** The `model` a run gets for a request's (undefined: the default), or a 404 `model_not_found`. */
export function runModel (listed: ListedModel[], model: string): string | undefined {
  if (model === DEFAULT_MODEL) return undefined
  const hit = listed.find(m => m.id === model || m.resolved === model)
  if (hit === undefined) {
    throw withProblem(new DomainError('model_not_found', `The model ${model} does not exist or is not available here; GET /v1/models lists them (${DEFAULT_MODEL} is the server's default)`), { problem: { param: 'model' } })
  }
  return hit.id === 'default' ? undefined : model
}
