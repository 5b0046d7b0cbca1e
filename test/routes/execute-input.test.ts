import { test } from 'tap'
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { auth, build } from '../helper.js'

/** Every bad input of the contract: exact status, problem+json naming the problem, nothing run. */
test('bad input is refused with problem+json naming the problem', async t => {
  const { app, box, model } = await build(t, { env: { MAX_BODY_BYTES: '65536', MAX_TIMEOUT: '600' } })
  mkdirSync(join(box.work, 'sub'))
  symlinkSync(box.outside, join(box.work, 'escape'))
  writeFileSync(join(box.work, 'file.txt'), 'x')

  const cases: Array<{ name: string, body?: unknown, raw?: string, headers?: Record<string, string>, status: number, code: string, detail?: RegExp, path?: string }> = [
    { name: 'missing prompt', body: {}, status: 400, code: 'invalid_request', path: '/prompt' },
    { name: 'empty prompt', body: { prompt: '' }, status: 400, code: 'invalid_request', path: '/prompt' },
    { name: 'unknown field', body: { prompt: 'x', promt: 'typo' }, status: 400, code: 'invalid_request', path: '/promt', detail: /promt/ },
    { name: 'timeout as a string', body: { prompt: 'x', timeout: '5' }, status: 400, code: 'invalid_request', path: '/timeout' },
    { name: 'timeout over MAX_TIMEOUT', body: { prompt: 'x', timeout: 601 }, status: 400, code: 'invalid_request', path: '/timeout' },
    { name: 'timeout zero', body: { prompt: 'x', timeout: 0 }, status: 400, code: 'invalid_request', path: '/timeout' },
    { name: 'bad session id', body: { prompt: 'x', session_id: 'not-a-uuid' }, status: 400, code: 'invalid_request', path: '/session_id' },
    { name: 'stream true on /api/execute', body: { prompt: 'x', stream: true }, status: 400, code: 'invalid_request', path: '/stream', detail: /\/api\/execute\/stream/ },
    { name: 'bad env var name', body: { prompt: 'x', env_vars: { 'BAD-NAME': '1' } }, status: 400, code: 'invalid_request' },
    { name: 'env var value not a string', body: { prompt: 'x', env_vars: { FOO: 1 } }, status: 400, code: 'invalid_request', path: '/env_vars/FOO' },
    { name: 'unknown permission mode', body: { prompt: 'x', permission_mode: 'yolo' }, status: 400, code: 'invalid_request', path: '/permission_mode' },
    { name: 'malformed JSON', raw: '{"prompt": "x",', status: 400, code: 'malformed_json' },
    { name: 'oversize body', body: { prompt: 'x'.repeat(70_000) }, status: 413, code: 'payload_too_large' },
    { name: 'traversal with ..', body: { prompt: 'x', working_directory: join(box.work, '..', 'outside') }, status: 403, code: 'working_directory_forbidden', detail: /outside the allowed roots/ },
    { name: 'relative traversal', body: { prompt: 'x', working_directory: '../outside' }, status: 403, code: 'working_directory_forbidden' },
    { name: 'escape through a symlink', body: { prompt: 'x', working_directory: join(box.work, 'escape') }, status: 403, code: 'working_directory_forbidden' },
    { name: '/etc', body: { prompt: 'x', working_directory: '/etc' }, status: 403, code: 'working_directory_forbidden', detail: /\/etc is outside/ },
    { name: 'missing directory', body: { prompt: 'x', working_directory: join(box.work, 'nope') }, status: 400, code: 'working_directory_not_found' },
    { name: 'a file, not a directory', body: { prompt: 'x', working_directory: join(box.work, 'file.txt') }, status: 400, code: 'working_directory_not_found' },
    { name: 'refused env var ANTHROPIC_BASE_URL', body: { prompt: 'x', env_vars: { ANTHROPIC_BASE_URL: 'http://evil' } }, status: 403, code: 'env_var_forbidden', detail: /ANTHROPIC_BASE_URL/ },
    { name: 'refused env var LD_PRELOAD', body: { prompt: 'x', env_vars: { OK_VAR: '1', LD_PRELOAD: '/tmp/x.so' } }, status: 403, code: 'env_var_forbidden', detail: /LD_PRELOAD/, path: '/env_vars/LD_PRELOAD' },
    { name: 'refused env var https_proxy', body: { prompt: 'x', env_vars: { https_proxy: 'http://evil' } }, status: 403, code: 'env_var_forbidden' },
    { name: 'refused env var PATH', body: { prompt: 'x', env_vars: { PATH: '/tmp' } }, status: 403, code: 'env_var_forbidden' },
    { name: 'disallowed permission mode', body: { prompt: 'x', permission_mode: 'bypassPermissions' }, status: 403, code: 'permission_mode_forbidden', detail: /bypassPermissions/ },
    { name: 'fork without a session id runs nothing either', body: { prompt: 'x', timeout: -1 }, status: 400, code: 'invalid_request' }
  ]

  for (const c of cases) {
    const res = await app.inject({
      method: 'POST',
      url: '/api/execute',
      headers: { ...auth, 'content-type': 'application/json', ...c.headers },
      payload: c.raw ?? JSON.stringify(c.body)
    })
    t.equal(res.statusCode, c.status, `${c.name}: status`)
    t.match(res.headers['content-type'], /^application\/problem\+json/, `${c.name}: problem+json`)
    const p = res.json()
    t.equal(p.code, c.code, `${c.name}: code`)
    t.equal(p.status, c.status, `${c.name}: status in body`)
    t.type(p.detail, 'string', `${c.name}: detail`)
    t.match(p.request_id, /\S/, `${c.name}: request_id`)
    t.notMatch(JSON.stringify(p), /at .*\.(ts|js):\d+/, `${c.name}: no stack`)
    if (c.detail !== undefined) t.match(p.detail, c.detail, `${c.name}: detail names the problem`)
    if (c.path !== undefined) t.ok(p.errors?.some((e: { path: string }) => e.path === c.path), `${c.name}: errors name ${c.path} (got ${JSON.stringify(p.errors)})`)
  }
  t.equal(model.calls.length, 0, 'no bad request reached the model')
})

test('a prompt that starts with -- is a prompt, not a flag', async t => {
  const { app, model } = await build(t)
  model.on('--dangerously-skip-permissions', [{ text: 'treated as text' }])
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: '--dangerously-skip-permissions --help' } })
  t.equal(res.statusCode, 200)
  t.equal(res.json().output, 'treated as text')
  t.equal(model.calls[0]?.prompt, '--dangerously-skip-permissions --help', 'the model received the prompt verbatim')
})

test('a directory inside an allowed root is used; an extra root can be allowed', async t => {
  const { app, box, model } = await build(t)
  mkdirSync(join(box.work, 'proj'))
  model.on('where am I', [{ tool: 'Bash', input: { command: 'pwd' } }, { text: 'ok' }])
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'where am I', working_directory: join(box.work, 'proj'), allowed_tools: ['Bash(pwd)'] } })
  t.equal(res.json().success, true)
  const toolResult = JSON.stringify(model.calls[1]?.body.messages.at(-1))
  t.match(toolResult, join(box.work, 'proj'), 'the command ran in the requested directory')
})
