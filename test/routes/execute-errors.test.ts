import { test } from 'tap'
import { auth, build, fakeModel, sandbox } from '../helper.js'

test('API failures surface fast as api_error with the status', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const { app } = await build(t, { box, model })
  for (const status of [401, 500, 529]) {
    model.on(`fail with ${status}`, [{ error: status, message: `boom ${status}` }])
    const started = Date.now()
    const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: `fail with ${status}` } })
    const elapsed = Date.now() - started
    t.equal(res.statusCode, 200, `${status}: the run was started, so 200`)
    const body = res.json()
    t.equal(body.success, false, `${status}: not a success`)
    t.equal(body.status, 'failed')
    t.equal(body.error_code, 'api_error', `${status}: api_error (got ${body.error})`)
    t.equal(body.api_error_status, status, `${status}: the status is carried`)
    t.match(body.error, /API Error/i, `${status}: error says why`)
    t.equal(body.exit_code, 1)
    t.ok(elapsed < 20_000, `${status}: fast with retries capped (${elapsed} ms)`)
  }
})

test('missing credentials give not_authenticated', async t => {
  const { app, model } = await build(t, { credentials: false })
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'hello' } })
  const body = res.json()
  t.equal(res.statusCode, 200)
  t.equal(body.success, false)
  t.equal(body.error_code, 'not_authenticated', body.error)
  t.match(body.error, /log/i, 'the error says how to log in')
  t.equal(model.calls.length, 0, 'no model call without credentials')
})

test('the request options reach the CLI: model, system prompt, env vars, tool rules', async t => {
  const { app, model } = await build(t, { env: { SECRET_OF_THE_SERVER: 'do-not-leak' } })
  model.on('show env', [{ tool: 'Bash', input: { command: 'printenv MY_VAR CLAUDE_API_KEY SECRET_OF_THE_SERVER; true' } }, { text: 'shown' }])
  const res = await app.inject({
    method: 'POST',
    url: '/api/execute',
    headers: auth,
    payload: {
      prompt: 'show env',
      model: 'claude-test-model-x',
      append_system_prompt: '-starts with a dash and stays one argument',
      env_vars: { MY_VAR: 'from-the-request' },
      allowed_tools: ['Bash(printenv *)']
    }
  })
  const body = res.json()
  t.equal(body.success, true, body.error)
  const first = model.calls[0]!
  t.equal(first.model, 'claude-test-model-x', 'model passed as --model')
  t.match(JSON.stringify(first.body.system), 'starts with a dash and stays one argument', 'system prompt appended')
  const toolResult = JSON.stringify(model.calls[1]?.body.messages.at(-1))
  t.match(toolResult, 'from-the-request', 'the request env var reached the command')
  t.notMatch(toolResult, 'test-key', 'the server API key is not in the run\'s environment')
  t.notMatch(toolResult, 'do-not-leak', 'unrelated server variables are not passed')
})

test('permission mode default refuses writes and lists the denial', async t => {
  const { app, box, model } = await build(t)
  model.on('write in default mode', [{ tool: 'Write', input: { file_path: `${box.work}/denied.txt`, content: 'x' } }, { text: 'could not write' }])
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'write in default mode', permission_mode: 'default' } })
  const body = res.json()
  t.equal(body.success, true, 'the run itself succeeds')
  t.equal(body.permission_denials.length, 1, 'the refused Write is listed')
  t.equal(body.permission_denials[0].tool_name, 'Write')
})

test('max_turns ends the run with max_turns', async t => {
  const { app, model } = await build(t)
  model.on('loop forever', () => ({ tool: 'Bash', input: { command: 'true' } }))
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'loop forever', max_turns: 2, allowed_tools: ['Bash(true)'] } })
  const body = res.json()
  t.equal(body.success, false)
  t.equal(body.error_code, 'max_turns', body.error)
})

test('a CLI that cannot be found gives cli_not_found, not a crash', async t => {
  const { app } = await build(t, { env: { CLAUDE_CODE_PATH: '/nonexistent/claude' } })
  const health = await app.inject({ url: '/health' })
  t.equal(health.statusCode, 200)
  t.equal(health.json().status, 'degraded')
  t.equal(health.json().claude_code_available, false)
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'hello' } })
  t.equal(res.statusCode, 200)
  t.equal(res.json().error_code, 'cli_not_found')
  t.match(res.json().error, /nonexistent\/claude/)
})
