import { test } from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { auth, eventually, fakeModel, pidsInDir, pidsMatching, sandbox, testEnv } from './helper.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))

test('the server process: serves, and on SIGTERM ends every run\'s tree and exits 0', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  model.on('sleep in the server', [{ tool: 'Bash', input: { command: 'sleep 3604' } }, { text: 'woke' }])
  const child = spawn(process.execPath, ['--import=tsx', 'src/server.ts'], {
    cwd: ROOT,
    env: testEnv(box, model, { HOST: '127.0.0.1', PORT: '0', LOG_LEVEL: 'info' }),
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => { child.kill('SIGKILL') })
  let out = ''
  child.stdout.on('data', (c: Buffer) => { out += c.toString() })
  child.stderr.on('data', (c: Buffer) => { out += c.toString() })
  t.ok(await eventually(() => /listening at http:\/\/127\.0\.0\.1:\d+/.test(out), 20_000), 'the server logs its address')
  const base = /listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(out)![1]!

  const health = await (await fetch(`${base}/health`)).json() as { status: string }
  t.equal(health.status, 'healthy')

  const pending = fetch(`${base}/api/execute`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'sleep in the server', allowed_tools: ['Bash(sleep *)'] }) })
  t.ok(await eventually(() => pidsMatching('sleep 3604').length > 0, 15_000), 'the run\'s Bash command is running')

  child.kill('SIGTERM')
  const res = await pending
  const body = await res.json() as { status: string, error: string }
  t.equal(body.status, 'cancelled', 'the client gets its result: cancelled by the shutdown')
  const [code] = await once(child, 'exit')
  t.equal(code, 0, 'clean exit')
  t.same(pidsMatching('sleep 3604'), [], 'no sleep left')
  t.same(pidsInDir(box.work), [], 'no process of the run left')
  t.notMatch(out, /"level":50/, 'no error logged')
})
