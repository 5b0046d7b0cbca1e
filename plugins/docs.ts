import fp from 'fastify-plugin'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { DESCRIPTION, VERSION } from '../src/package-info.js'

const API_DESCRIPTION = `${DESCRIPTION}

Authenticate with \`X-API-Key: <key>\` or \`Authorization: Bearer <key>\`. Every error is RFC 9457
problem details (\`application/problem+json\`) with a stable \`code\` and the \`request_id\`.`

const redocPage = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Claude Code API · ReDoc</title>
  <style>body { margin: 0; padding: 0; }</style>
</head>
<body>
  <redoc spec-url="/openapi.json" hide-download-button="false"></redoc>
  <script src="/redoc/redoc.standalone.js"></script>
</body>
</html>
`

/**
 * The OpenAPI document generated from the route schemas, at `/openapi.json`; Swagger UI at
 * `/docs` and ReDoc at `/redoc`, both served from local packages so they work offline.
 */
export default fp(async (fastify) => {
  await fastify.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'Claude Code API', version: VERSION, description: API_DESCRIPTION, license: { name: 'MIT' } },
      tags: [
        { name: 'execute', description: 'Run Claude Code to completion or streamed' },
        { name: 'runs', description: 'Durable runs: start, follow, replay, list, cancel' },
        { name: 'approvals', description: 'Tool permission requests of interactive runs' },
        { name: 'sessions', description: 'Claude sessions: list, read, rename, fork, delete' },
        { name: 'files', description: 'Workspaces: files in, archives in and out; a run\'s changes and their revert' },
        { name: 'openai', description: 'OpenAI-compatible API (`/v1`): models, chat completions, responses' },
        { name: 'system', description: 'Health and service information' }
      ],
      components: {
        securitySchemes: {
          ApiKeyAuth: { type: 'apiKey', in: 'header', name: 'X-API-Key' },
          BearerAuth: { type: 'http', scheme: 'bearer' }
        }
      }
    },
    refResolver: {
      // Named components keep their `$id`, so generated clients get readable type names.
      buildLocalReference: (json, _baseUri, _fragment, i) => typeof json.$id === 'string' ? json.$id : `def-${i}`
    }
  })
  await fastify.register(swaggerUi, {
    routePrefix: '/docs',
    uiConfig: { validatorUrl: null, deepLinking: true, displayRequestDuration: true },
    staticCSP: true,
    // Served over plain HTTP by default: the stock policy's upgrade-insecure-requests would blank the
    // page for any host but localhost, and nothing here needs an outside validator or https: source.
    transformStaticCSP: (header: string) => header.replace(/\s*upgrade-insecure-requests;/, '').replace(' validator.swagger.io', '').replaceAll(' https:', '')
  })

  fastify.get('/openapi.json', { schema: { hide: true } }, async () => fastify.swagger())

  const redocBundle = createRequire(import.meta.url).resolve('redoc/bundles/redoc.standalone.js')
  let redocJs: Buffer | undefined
  fastify.get('/redoc', { schema: { hide: true } }, async (_request, reply) =>
    reply.type('text/html; charset=utf-8').send(redocPage))
  fastify.get('/redoc/redoc.standalone.js', { schema: { hide: true } }, async (_request, reply) => {
    redocJs ??= await readFile(redocBundle)
    return reply.type('application/javascript; charset=utf-8').header('cache-control', 'public, max-age=86400').send(redocJs)
  })
}, { name: 'docs' })
