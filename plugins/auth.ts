import fp from 'fastify-plugin'
import rateLimit, { type FastifyRateLimitOptions } from '@fastify/rate-limit'
import { randomBytes } from 'node:crypto'
import { allows, KeyRing, readKeyFile, sha256Hex, toApiKey, type ApiKey, type Scope } from '../src/auth/keys.js'
import { InsufficientScope, RateLimited, withProblem } from '../src/domain/errors.js'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { sendProblem } from './problem.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The key the request presented (null with auth off: then everything is allowed). */
    apiKey: ApiKey | null
    /** Its name, recorded with the runs it starts (null with auth off). */
    apiKeyName: string | null
  }
  interface FastifyContextConfig {
    /** The scope a route needs (a list: any of them). */
    scope?: Scope | Scope[]
  }
  interface FastifyInstance {
    /** Whether the request may see and act on everything (admin key, or auth off). */
    isAdmin: (request: FastifyRequest) => boolean
    /** Whether the request may read every key's runs (admin, `runs:read_all`, or auth off). */
    readsAllRuns: (request: FastifyRequest) => boolean
    /** The accepted keys (undefined with auth off). */
    keyRing: KeyRing | undefined
    /** The /api auth check, an onRequest hook for the API scope (undefined with auth off). */
    authenticate: ((request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => void) | undefined
    /** Options for `@fastify/rate-limit` in the API scope: per key, by its `rate_limit_per_min`. */
    rateLimitOptions: FastifyRateLimitOptions | undefined
  }
}

export interface AuthPluginOptions {
  /** Where a generated key is announced; stdout by default. */
  announce?: (text: string) => void
}

/**
 * A fixed-window counter shared by every /api route (the plugin's own store is per route), so a
 * key's requests count together wherever they go. Keys are key names: a handful, never pruned.
 */
class SharedWindowStore {
  private readonly windows = new Map<string, { current: number, start: number }>()
  incr (key: string, cb: (err: Error | null, res: { current: number, ttl: number }) => void, timeWindow: number): void {
    const now = Date.now()
    let w = this.windows.get(key)
    if (w === undefined || w.start + timeWindow <= now) {
      w = { current: 0, start: now }
      this.windows.set(key, w)
    }
    w.current++
    cb(null, { current: w.current, ttl: w.start + timeWindow - now })
  }

  child (): this {
    return this
  }
}

/** The key a request presents: `X-API-Key`, else `Authorization: Bearer`. */
export function presentedKey (headers: Record<string, string | string[] | undefined>): string | undefined {
  const x = headers['x-api-key']
  if (typeof x === 'string' && x.length > 0) return x
  const auth = headers.authorization
  if (typeof auth === 'string') {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth)
    if (m !== null) return m[1]
  }
  return undefined
}

/**
 * The API's keys: named, with scopes and limits, in `API_KEYS_FILE` (hashed; unset, `./api-keys.json`
 * when it exists, where `npm run keys -- add` writes by default); `CLAUDE_API_KEY` is
 * one more key, `default`, with every scope. With neither, a random key is generated and printed
 * once. Provides the `authenticate` hook (each route names the scope it needs) and the per-key
 * rate limit's options; the API scope (`routes/api.ts`) applies both to its routes only.
 */
export default fp<AuthPluginOptions>(async (fastify, opts) => {
  const { enableAuth, apiKey, apiKeysFile } = fastify.config
  fastify.decorateRequest('apiKey', null)
  fastify.decorateRequest('apiKeyName', null)
  fastify.decorate('isAdmin', (request) => !enableAuth || (request.apiKey !== null && allows(request.apiKey, 'admin')))
  fastify.decorate('readsAllRuns', (request) => !enableAuth || (request.apiKey !== null && allows(request.apiKey, 'runs:read_all')))
  fastify.decorate('keyRing', undefined)
  if (!enableAuth) {
    fastify.decorate('authenticate', undefined)
    fastify.decorate('rateLimitOptions', undefined)
    fastify.log.warn('ENABLE_AUTH=false: /api/* is open to anyone who can reach this port')
    return
  }

  const keys = apiKeysFile !== undefined ? readKeyFile(apiKeysFile).keys.map(toApiKey) : []
  let single = apiKey
  if (single === undefined && keys.length === 0) {
    single = randomBytes(24).toString('base64url')
    const announce = opts.announce ?? ((text: string) => process.stdout.write(text))
    announce(`No CLAUDE_API_KEY set: generated an API key for this run of the server:\n\n  ${single}\n\n` +
      'Clients send it as "X-API-Key: <key>" or "Authorization: Bearer <key>". It changes at every start;\n' +
      'set CLAUDE_API_KEY in the environment (or .env) for a stable key, or name keys in API_KEYS_FILE.\n')
  }
  if (single !== undefined) {
    if (keys.some(k => k.name === 'default')) fastify.log.warn('CLAUDE_API_KEY and an API_KEYS_FILE key are both named "default"')
    keys.push(toApiKey({ name: 'default', key_sha256: sha256Hex(single), scopes: ['admin'] }))
  }
  const ring = new KeyRing(keys)
  fastify.keyRing = ring
  fastify.log.info({ keys: keys.map(k => k.name), file: apiKeysFile ?? null }, apiKeysFile !== undefined ? `API keys loaded, named keys from ${apiKeysFile}` : 'API keys loaded')

  const authenticate = (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void => {
    const presented = presentedKey(request.headers)
    const key = presented === undefined ? undefined : ring.match(presented)
    if (key === undefined) {
      reply.header('www-authenticate', 'Bearer realm="claude-code-api", ApiKey realm="claude-code-api", header="X-API-Key"')
      sendProblem(request, reply, 401, 'unauthorized',
        presented === undefined ? 'Missing API key: send it as X-API-Key or Authorization: Bearer' : 'Invalid API key')
      return
    }
    request.apiKey = key
    request.apiKeyName = key.name
    // Both: Fastify's own "request completed" line is written through reply.log.
    request.log = request.log.child({ key_name: key.name })
    reply.log = request.log
    const scope = request.routeOptions.config.scope
    const anyOf = scope === undefined ? [] : [scope].flat()
    if (anyOf.length > 0 && !anyOf.some(s => allows(key, s))) {
      done(new InsufficientScope(`the key ${key.name} lacks the scope ${anyOf.join(' or ')} (it has: ${[...key.scopes].join(', ')})`))
      return
    }
    done()
  }
  fastify.decorate('authenticate', authenticate)
  // Per key, by name: a key without `rate_limit_per_min` is not limited. One window per key,
  // shared by every API route.
  const rateLimitOptions: FastifyRateLimitOptions = {
    global: true,
    store: SharedWindowStore as never,
    hook: 'onRequest',
    timeWindow: 60_000,
    allowList: (request: FastifyRequest) => request.apiKey?.rateLimitPerMin === undefined,
    keyGenerator: (request: FastifyRequest) => request.apiKey?.name ?? request.ip,
    max: (request: FastifyRequest) => request.apiKey?.rateLimitPerMin ?? 1,
    errorResponseBuilder: (request: FastifyRequest, context: { max: number, ttl: number }) => withProblem(
      new RateLimited(`the key ${request.apiKey?.name ?? ''} is limited to ${context.max} requests a minute; retry in ${Math.ceil(context.ttl / 1000)} s`),
      { retryAfter: Math.max(1, Math.ceil(context.ttl / 1000)) }
    )
  }
  fastify.decorate('rateLimitOptions', rateLimitOptions)
}, { name: 'auth', dependencies: ['config', 'problem'] })

export { rateLimit }
