import fp from 'fastify-plugin'
import fastifyStatic from '@fastify/static'
import type { FastifyReply } from 'fastify'
import { join } from 'node:path'
import { PACKAGE_ROOT } from '../src/package-info.js'

/** Where the console's files are: read at runtime from the package, never copied into dist/. */
export const CONSOLE_DIR = join(PACKAGE_ROOT, 'console')

/**
 * Nothing but the console's own files: no inline script or style, no other origin, no framing.
 * Run output is shown as text, and this is the second wall if a bug ever made it markup.
 */
export const CONSOLE_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"

const securityHeaders: Record<string, string> = {
  'content-security-policy': CONSOLE_CSP,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer'
}

/**
 * The web console at `/console/`: static files (HTML, ES modules, CSS) that call the API with the
 * key the user signs in with. Public, like the docs: the page holds no data, its API calls carry
 * the key. `/console` redirects relatively, so the console works under any path prefix (Nginx).
 */
export default fp(async (fastify) => {
  await fastify.register(async (scope) => {
    scope.addHook('onSend', async (_request, reply: FastifyReply, payload) => {
      reply.headers(securityHeaders)
      // No hashed file names: every load revalidates (ETag), so an upgrade is seen at once.
      reply.header('cache-control', 'no-cache')
      return payload
    })
    scope.get('/console', { schema: { hide: true } }, async (_request, reply) =>
      await reply.redirect('console/', 302))
    await scope.register(fastifyStatic, {
      root: CONSOLE_DIR,
      prefix: '/console/',
      index: ['index.html'],
      decorateReply: false,
      cacheControl: false,
      serve: true,
      schemaHide: true
    })
  })
}, { name: 'console' })
