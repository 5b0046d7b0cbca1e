import { test } from 'tap'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { auth, build } from '../helper.js'

test('the seed example: "create hello.py" really creates the file', async t => {
  const { app, box, model } = await build(t)
  const file = join(box.work, 'hello.py')
  model.on('Create a hello.py', [{ tool: 'Write', input: { file_path: file, content: 'print("Hello, World!")\n' } }, { text: 'Created hello.py' }])
  const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'Create a hello.py file that prints Hello World' } })
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.equal(body.success, true, body.error)
  t.equal(body.status, 'succeeded')
  t.equal(body.output, 'Created hello.py')
  t.equal(body.exit_code, 0)
  t.equal(body.num_turns, 2)
  t.match(body.session_id, /^[0-9a-f-]{36}$/)
  t.ok(existsSync(file), 'hello.py exists')
  t.equal(readFileSync(file, 'utf8'), 'print("Hello, World!")\n')
})
