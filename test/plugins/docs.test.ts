import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { Validator } from '@seriousme/openapi-schema-validator'
import { auth, build } from '../helper.js'

const ORIGIN = 'http://localhost'
const EXECUTE_PATHS = ['/api/execute', '/api/execute/stream']
const ERROR_STATUSES = ['400', '401', '403', '409', '413', '429']

/** GET `url`, following same-origin redirects the way a browser would. */
async function follow (app: FastifyInstance, url: string): Promise<{ res: LightMyRequestResponse, url: string }> {
  for (let hops = 0; hops < 5; hops++) {
    const res = await app.inject({ method: 'GET', url })
    const location = res.headers.location
    if (res.statusCode < 300 || res.statusCode >= 400 || typeof location !== 'string') return { res, url }
    const next = new URL(location, ORIGIN + url)
    if (next.origin !== ORIGIN) throw new Error(`${url} redirects off-site to ${location}`)
    url = next.pathname + next.search
  }
  throw new Error(`${url}: too many redirects`)
}

/** Every `src`, `href` and ReDoc `spec-url` in an HTML page. */
function references (html: string): string[] {
  return [...html.matchAll(/\b(?:src|href|spec-url)\s*=\s*["']([^"']*)["']/gi)].map(m => m[1] ?? '')
}

/** All `$ref` values anywhere in a JSON value. */
function refsIn (value: unknown, out: string[] = []): string[] {
  if (Array.isArray(value)) {
    for (const v of value) refsIn(v, out)
  } else if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if (k === '$ref' && typeof v === 'string') out.push(v)
      else refsIn(v, out)
    }
  }
  return out
}

test('GET /openapi.json is an OpenAPI 3 document whose references resolve', async t => {
  const { app } = await build(t)
  const res = await app.inject({ method: 'GET', url: '/openapi.json' })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^application\/json/)
  const doc = res.json()
  t.match(doc.openapi, /^3\./)
  t.equal(doc.info?.title, 'Claude Code API')
  t.type(doc.info?.version, 'string')

  const components = doc.components?.schemas ?? {}
  for (const ref of new Set(refsIn(doc))) {
    const name = /^#\/components\/schemas\/(.+)$/.exec(ref)?.[1]
    t.ok(name !== undefined && name in components, `${ref} resolves to a component`)
  }

  const ui = await app.inject({ method: 'GET', url: '/docs/json' })
  t.equal(ui.statusCode, 200)
  t.same(ui.json(), doc, 'Swagger UI loads the same document')
})

test('GET /openapi.json passes an OpenAPI schema validator', async t => {
  const { app } = await build(t)
  const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
  const result = await new Validator().validate(doc)
  const errors = Array.isArray(result.errors)
    ? result.errors.map(e => `${e.instancePath} ${e.message ?? ''} ${JSON.stringify(e.params)}`)
    : [String(result.errors ?? '')]
  t.ok(result.valid, `the ${String(doc.openapi)} document is valid:\n${errors.join('\n')}`)
})

test('the document describes the API as clients need it', async t => {
  const { app } = await build(t)
  const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()

  for (const p of ['/health', ...EXECUTE_PATHS]) t.ok(doc.paths?.[p], `documents ${p}`)
  t.ok(doc.paths['/health'].get, 'GET /health')
  t.notOk(doc.paths['/openapi.json'] ?? doc.paths['/docs'] ?? doc.paths['/redoc'], 'the docs routes themselves are hidden')

  t.same(doc.components?.securitySchemes?.ApiKeyAuth, { type: 'apiKey', in: 'header', name: 'X-API-Key' })
  t.match(doc.components?.securitySchemes?.BearerAuth, { type: 'http', scheme: 'bearer' })

  const schemas = doc.components?.schemas ?? {}
  t.ok(schemas.Problem, 'Problem is a named component')
  t.ok(schemas.ExecuteResult, 'ExecuteResult is a named component')
  t.same(Object.keys(schemas).filter(k => /^def-\d+$/.test(k)), [], 'no anonymous def-N components')
  t.notOk(refsIn(doc).some(r => /def-\d+/.test(r)), 'no $ref to a def-N')

  for (const p of EXECUTE_PATHS) {
    const op = doc.paths[p].post
    t.ok(op, `POST ${p}`)
    t.type(op.operationId, 'string', `${p} has an operationId`)
    t.ok(op.summary, `${p} has a summary`)
    t.same(op.security, [{ ApiKeyAuth: [] }, { BearerAuth: [] }], `${p} requires either key`)
    for (const status of ERROR_STATUSES) {
      t.same(op.responses?.[status]?.content, { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } },
        `${p} ${status} is problem+json referencing Problem`)
      t.ok(op.responses?.[status]?.description, `${p} ${status} is described`)
    }

    const body = op.requestBody?.content?.['application/json']?.schema
    t.equal(op.requestBody?.required, true, `${p} body is required`)
    t.equal(body?.type, 'object')
    t.equal(body?.additionalProperties, false, `${p} body rejects unknown fields`)
    t.same(body?.required, ['prompt'], `${p} body requires only prompt`)
    t.equal(body?.properties?.prompt?.type, 'string')
    t.equal(body?.properties?.prompt?.minLength, 1)
  }

  const execute = doc.paths['/api/execute'].post
  t.same(execute.responses['200'].content, { 'application/json': { schema: { $ref: '#/components/schemas/ExecuteResult' } } },
    'the execute result is a $ref to ExecuteResult')

  const stream = doc.paths['/api/execute/stream'].post
  t.ok(stream.responses['200'].content?.['text/event-stream'], 'the stream answers text/event-stream')
  t.notOk(stream.responses['200'].content?.['application/json'], 'and not JSON')
  for (const event of ['run', 'message', 'text', 'result']) {
    t.match(stream.description, new RegExp(`\`${event}\``), `the stream description names the ${event} event`)
    t.match(stream.responses['200'].description, new RegExp(`\`${event}\``), `the 200 description names the ${event} event`)
  }
  t.equal(stream.requestBody.content['application/json'].schema.properties.include_partial_messages?.type, 'boolean')
})

test('the document declares the headers the contract promises', async t => {
  const { app } = await build(t)
  const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
  for (const p of EXECUTE_PATHS) {
    const responses = doc.paths[p].post.responses
    t.ok(responses['429']?.headers?.['Retry-After'], `${p} 429 documents Retry-After`)
    t.ok(responses['401']?.headers?.['WWW-Authenticate'], `${p} 401 documents WWW-Authenticate`)
  }
})

test('the docs are public while /api/* requires a key', async t => {
  const { app } = await build(t)
  const refused = await app.inject({ method: 'POST', url: '/api/execute', payload: { prompt: 'hi' } })
  t.equal(refused.statusCode, 401, 'auth is on')

  for (const url of ['/openapi.json', '/docs/json', '/redoc', '/redoc/redoc.standalone.js']) {
    const res = await app.inject({ method: 'GET', url })
    t.equal(res.statusCode, 200, `${url} without a key`)
  }
  const { res, url } = await follow(app, '/docs')
  t.equal(res.statusCode, 200, `/docs without a key (ends at ${url})`)
  t.match(res.headers['content-type'], /^text\/html/)

  const withKey = await app.inject({ method: 'GET', url: '/openapi.json', headers: auth })
  t.equal(withKey.statusCode, 200, 'a key does no harm')
})

test('Swagger UI at /docs is served from local files only', async t => {
  const { app } = await build(t)
  for (const start of ['/docs', '/docs/']) {
    const { res, url } = await follow(app, start)
    t.equal(res.statusCode, 200, `${start} ends at ${url}`)
    t.match(res.headers['content-type'], /^text\/html/)
    const refs = references(res.body)
    t.ok(refs.some(r => r.endsWith('swagger-ui-bundle.js')), 'loads the Swagger UI bundle')
    t.ok(refs.some(r => r.endsWith('swagger-ui.css')), 'and its CSS')
    t.ok(refs.some(r => r.endsWith('swagger-initializer.js')), 'and its initializer')

    for (const ref of refs) {
      t.notMatch(ref, /^(?:[a-z][a-z0-9+.-]*:)?\/\//i, `${start}: ${ref} names no other host`)
      const target = new URL(ref, ORIGIN + url)
      t.equal(target.origin, ORIGIN, `${ref} is same-origin`)
      const asset = await app.inject({ method: 'GET', url: target.pathname })
      t.equal(asset.statusCode, 200, `${start}: ${target.pathname} loads`)
      t.ok(asset.rawPayload.length > 0, `${target.pathname} is not empty`)
    }

    const initRef = refs.find(r => r.endsWith('swagger-initializer.js')) ?? ''
    const initUrl = new URL(initRef, ORIGIN + url)
    const init = (await app.inject({ method: 'GET', url: initUrl.pathname })).body
    const config = /const config = (\{.*\})/.exec(init)?.[1]
    t.ok(config, 'the initializer carries our UI config')
    t.match(JSON.parse(config ?? '{}'), { validatorUrl: null }, 'no external spec validator')
    t.notMatch(init, /validatorUrl:\s*["'`]https?:/, 'the validator URL is never an external one')
    const code = init.split('\n').filter(line => !line.trim().startsWith('//')).join('\n')
    t.notMatch(code, /https?:\/\//, 'the initializer names no external URL (outside comments)')
    const specRef = /\burl:\s*resolveUrl\(['"]([^'"]+)['"]\)/.exec(init)?.[1]
    t.equal(specRef, './json', 'the spec is loaded relative to the page')
    const spec = await app.inject({ method: 'GET', url: new URL(specRef ?? '', new URL('./', ORIGIN + '/docs/')).pathname })
    t.equal(spec.statusCode, 200, 'the spec the UI loads is served')
    t.match(spec.json(), { openapi: /^3\./ })
  }
})

test('the /docs CSP suits a plain-HTTP, offline server', async t => {
  const { app } = await build(t)
  const { res } = await follow(app, '/docs')
  const csp = String(res.headers['content-security-policy'] ?? '')
  t.ok(csp, 'a CSP is set')
  t.notMatch(csp, /upgrade-insecure-requests/, 'same-origin http assets are not upgraded to https')
  t.notMatch(csp, /validator\.swagger\.io|https:/, 'no external host is allowed')
})

test('ReDoc at /redoc is served from local files only', async t => {
  const { app } = await build(t)
  const { res, url } = await follow(app, '/redoc')
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/html/)
  const refs = references(res.body)
  t.ok(refs.some(r => r.endsWith('redoc.standalone.js')), 'loads the ReDoc bundle')
  t.ok(refs.includes('/openapi.json'), 'points ReDoc at /openapi.json')
  t.notMatch(res.body, /https?:\/\//, 'the page names no external URL')
  for (const ref of refs) {
    t.notMatch(ref, /^(?:[a-z][a-z0-9+.-]*:)?\/\//i, `${ref} names no other host`)
    const target = new URL(ref, ORIGIN + url)
    t.equal(target.origin, ORIGIN, `${ref} is same-origin`)
    const asset = await app.inject({ method: 'GET', url: target.pathname })
    t.equal(asset.statusCode, 200, `${target.pathname} loads`)
  }
  const bundle = await app.inject({ method: 'GET', url: '/redoc/redoc.standalone.js' })
  t.match(bundle.headers['content-type'], /javascript/)
  t.ok(bundle.rawPayload.length > 100_000, 'the real ReDoc bundle')
})

test('the example body Swagger UI fills in for "Try it out" works as it is, on every run-starting route', async t => {
  const { app } = await build(t)
  const doc = (await app.inject({ url: '/openapi.json' })).json()
  for (const path of ['/api/execute', '/api/execute/stream', '/api/runs']) {
    const media = doc.paths[path].post.requestBody.content['application/json']
    t.same(media.example, { prompt: 'Say hello in one short sentence.' }, `${path}: a minimal example (no stream, no directory, no webhook)`)
  }
  const example = doc.paths['/api/execute'].post.requestBody.content['application/json'].example
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: example })
  t.equal(res.statusCode, 200)
  t.equal(res.json().success, true, res.json().error)
  const runs = await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: example })
  t.equal(runs.statusCode, 202, 'POST /api/runs takes it too')
})

test('/metrics is in the document, with its token auth', async t => {
  const { app } = await build(t)
  const doc = (await app.inject({ url: '/openapi.json' })).json()
  const op = doc.paths['/metrics']?.get
  t.ok(op, 'GET /metrics is documented')
  t.ok(op.responses['200'].content['text/plain'], 'as Prometheus text')
  t.ok(op.responses['401'], 'with its 401')
  t.match(op.description, /METRICS_TOKEN/)
})

test('the sessions API is in the document: every operation, the Session component, its errors', async t => {
  const { app } = await build(t)
  const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
  const ops: Array<[string, string, string]> = [
    ['/api/sessions', 'get', 'listSessions'],
    ['/api/sessions/{id}', 'get', 'getSession'],
    ['/api/sessions/{id}', 'patch', 'renameSession'],
    ['/api/sessions/{id}', 'delete', 'deleteSession'],
    ['/api/sessions/{id}/messages', 'get', 'getSessionMessages'],
    ['/api/sessions/{id}/fork', 'post', 'forkSession']
  ]
  for (const [path, method, id] of ops) {
    const op = doc.paths?.[path]?.[method]
    t.equal(op?.operationId, id, `${method.toUpperCase()} ${path} is ${id}`)
    t.ok(op?.summary, `${id} has a summary`)
    t.same(op?.tags, ['sessions'])
    if (path !== '/api/sessions') t.match(op?.responses?.['404']?.description, /session_not_found/, `${id} documents session_not_found`)
  }
  t.ok(doc.components?.schemas?.Session, 'Session is a named component')
  t.match(doc.paths['/api/sessions/{id}'].delete.responses['409'].description, /session_busy/)
  t.ok(doc.paths['/api/sessions/{id}/fork'].post.responses['201'], 'a fork answers 201')
  t.match(doc.components.schemas.Health?.properties?.warm ?? doc.paths['/health'].get.responses['200'].content['application/json'].schema.properties.warm, { properties: { parked: {}, target: {} } }, '/health documents warm')
})
