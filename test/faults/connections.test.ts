import { test } from 'tap'
import { connect, type Socket } from 'node:net'
import { auth, eventually, fakeModel, sandbox, startServer, testEnv } from '../helper.js'

/** A client that sends part of a request, then a byte now and then, never finishing it. */
function trickle (port: number, what: 'headers' | 'body'): { socket: Socket, closed: () => boolean } {
  let closed = false
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  socket.on('close', () => { closed = true })
  socket.write(what === 'headers'
    ? 'GET /health HTTP/1.1\r\nhost: x\r\n'
    : `POST /api/execute HTTP/1.1\r\nhost: x\r\nx-api-key: ${auth['x-api-key']}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{"prompt":"`)
  const timer = setInterval(() => { if (!closed) socket.write(what === 'headers' ? 'x' : 'a') }, 300)
  socket.on('close', () => clearInterval(timer))
  return { socket, closed: () => closed }
}

test('with 256 file descriptors, 400 trickling clients are cut at the request timeout; the server stays up and runs go on', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  model.on('work through the flood', [{ tool: 'Bash', input: { command: 'sh -c "sleep 2; echo flood-survived"' } }, { text: 'Survived.' }])
  const server = await startServer(t, testEnv(box, model, { NOFILE: '256', REQUEST_TIMEOUT_S: '3' }))
  const port = Number(new URL(server.base).port)
  // A run that is busy (and will end, sweeping /proc for its processes) while the flood goes on.
  const run = fetch(`${server.base}/api/execute`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'work through the flood', allowed_tools: ['Bash(sh *)'] }) })
  await eventually(() => model.calls.some(c => c.prompt === 'work through the flood'), 15_000)

  const clients = Array.from({ length: 400 }, (_, i) => trickle(port, i % 2 === 0 ? 'headers' : 'body'))
  t.teardown(() => { for (const c of clients) c.socket.destroy() })
  t.ok(await eventually(() => clients.every(c => c.closed()), 20_000), 'every trickling client was cut (refused at the limit, or at the timeout)')
  t.equal(server.child.exitCode, null, 'the server is still running')

  const body = await (await run).json() as { status: string, error: string | null }
  t.equal(body.status, 'succeeded', `the run went on and succeeded (${body.error ?? ''})`)
  const health = await fetch(`${server.base}/health`)
  t.equal(health.status, 200, '/health answers again')
  const after = await fetch(`${server.base}/api/execute`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'after the flood' }) })
  t.equal((await after.json() as { status: string }).status, 'succeeded', 'new runs start')
  t.notMatch(server.output(), /EMFILE|unhandled rejection/, 'no descriptor ran out, nothing went unhandled')
  t.match(server.output(), /connection limit reached/, 'the refused connections were logged')
  server.child.kill('SIGTERM')
  t.equal(await server.exited, 0)
})
