import fp from 'fastify-plugin'
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { sendProblem } from './problem.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The name of the API key the request presented (null with auth off). Recorded with its runs. */
    apiKeyName: string | null
  }
}

export interface AuthPluginOptions {
  /** Where a generated key is announced; stdout by default. */
  announce?: (text: string) => void
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest()

/** The key a request presents: `X-API-Key`, else `Authorization: Bearer`. */
function presentedKey (headers: Record<string, string | string[] | undefined>): string | undefined {
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
 * Requires an API key on `/api/*` when `ENABLE_AUTH` is on. Keys are compared as SHA-256
 * digests with `timingSafeEqual`, so neither content nor length leaks through timing. With auth
 * on and no key configured, a random key is generated and printed once.
 */
export default fp<AuthPluginOptions>(async (fastify, opts) => {
  const { enableAuth, apiKey } = fastify.config
  fastify.decorateRequest('apiKeyName', null)
  if (!enableAuth) {
    fastify.log.warn('ENABLE_AUTH=false: /api/* is open to anyone who can reach this port')
    return
  }
  let key = apiKey
  if (key === undefined) {
    key = randomBytes(24).toString('base64url')
    const announce = opts.announce ?? ((text: string) => process.stdout.write(text))
    announce(`No CLAUDE_API_KEY set: generated an API key for this run of the server:\n\n  ${key}\n\n` +
      'Clients send it as "X-API-Key: <key>" or "Authorization: Bearer <key>". It changes at every start;\n' +
      'set CLAUDE_API_KEY in the environment (or .env) for a stable key.\n')
  }
  const expected = digest(key)

  fastify.addHook('onRequest', async (request, reply) => {
    if (!request.url.startsWith('/api/')) return
    const presented = presentedKey(request.headers)
    if (presented !== undefined && timingSafeEqual(digest(presented), expected)) {
      request.apiKeyName = 'default'
      return
    }
    reply.header('www-authenticate', 'Bearer realm="claude-code-api", ApiKey realm="claude-code-api", header="X-API-Key"')
    return sendProblem(request, reply, 401, 'unauthorized',
      presented === undefined ? 'Missing API key: send it as X-API-Key or Authorization: Bearer' : 'Invalid API key')
  })
}, { name: 'auth', dependencies: ['config', 'problem'] })
