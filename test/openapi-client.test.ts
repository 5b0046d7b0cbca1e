import { test } from 'tap'
import { API_KEY, build, listen } from './helper.js'
import { generateClient, importClient, typeCheck } from './fixtures/openapi-client.js'

test('a client generated from /openapi.json compiles strictly and runs a prompt', async t => {
  const { app, model } = await build(t)
  const res = await app.inject({ method: 'GET', url: '/openapi.json' })
  t.equal(res.statusCode, 200)
  const gen = await generateClient(t, res.json())

  t.match(gen.schema, /"\/api\/execute": \{/, 'the generated types have the execute path')
  t.match(gen.schema, /ExecuteResult: \{/, 'the result is a named type')
  t.match(gen.schema, /Problem: \{/, 'the problem is a named type')

  const diagnostics = typeCheck([gen.schemaFile, gen.clientFile])
  t.same(diagnostics, [], `the generated types and the client compile under strict NodeNext:\n${diagnostics.join('\n')}`)

  const client = await importClient(gen.clientFile)
  const baseUrl = await listen(app)
  model.on('say hi', [{ text: 'Hi from the fake model' }])

  await t.test('with the right key, the run succeeds', async t => {
    const { data, error, status } = await client.runPrompt(baseUrl, API_KEY, 'Please say hi')
    t.equal(status, 200)
    t.equal(error, undefined, 'no error body')
    t.ok(data, 'a typed 200 body')
    t.equal(data?.success, true, data?.error ?? 'success')
    t.equal(data?.output, 'Hi from the fake model')
    t.equal(data?.status, 'succeeded')
    t.equal(data?.error, null)
    t.equal(data?.exit_code, 0)
    t.match(data?.session_id, /^[0-9a-f-]{36}$/)
  })

  await t.test('with a wrong key, the client surfaces the 401 problem', async t => {
    const { data, error, status } = await client.runPrompt(baseUrl, 'not-the-key', 'Please say hi')
    t.equal(status, 401)
    t.equal(data, undefined, 'no result body')
    t.equal(error?.code, 'unauthorized')
    t.equal(error?.status, 401)
    t.equal(error?.title, 'Unauthorized')
    t.type(error?.request_id, 'string')
  })
})
