import { test } from 'tap'
import { connect, createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net'
import { createServer as createHttpServer, request, type IncomingHttpHeaders, type Server as HttpServer } from 'node:http'
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { EgressProxy, isPublicAddress, type EgressOptions } from '../../src/isolation/egress-proxy.js'

/**
 * The egress proxy over real sockets: a client on the proxy's UNIX socket (as the relay inside a
 * sandbox would be), targets listening on loopback. Each test has its own temp directory.
 */

/** The tap test object, as far as the helpers need it. */
interface T { teardown: (fn: () => unknown) => void }

type Refusal = { run: string, host: string, port: number, why: string }

function tempDir (t: T): string {
  const dir = mkdtempSync(join(tmpdir(), 'ccapi-egress-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A proxy listening for run `run-1` in a temp directory, closed at the end of the test. */
async function startProxy (t: T, o: EgressOptions = {}): Promise<{ proxy: EgressProxy, path: string, dir: string, stop: () => Promise<void>, refusals: Refusal[] }> {
  const dir = tempDir(t)
  const refusals: Refusal[] = []
  const proxy = new EgressProxy({ onRefused: r => refusals.push(r), ...o })
  t.teardown(() => proxy.close())
  const path = join(dir, 'egress.sock')
  const stop = await proxy.listen(path, 'run-1')
  return { proxy, path, dir, stop, refusals }
}

/** Listen on an ephemeral port of `host`; every connection is destroyed and the server closed at the end. */
async function listening (t: T, server: NetServer | HttpServer, host: string): Promise<number> {
  const sockets = new Set<Socket>()
  server.on('connection', (s: Socket) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, host, () => resolve())
  })
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise<void>(resolve => server.close(() => resolve()))
  })
  return (server.address() as AddressInfo).port
}

/** A TCP target that answers `pong:<bytes>` to whatever it gets, counting connections. */
async function pongTarget (t: T, host = '127.0.0.1'): Promise<{ port: number, connections: () => number, open: Set<Socket>, received: () => string }> {
  let n = 0
  let got = ''
  const open = new Set<Socket>()
  const server = createNetServer(s => {
    n++
    open.add(s)
    s.on('close', () => open.delete(s))
    s.on('error', () => {})
    s.on('data', d => {
      got += d.toString()
      s.write('pong:' + d.toString())
    })
  })
  const port = await listening(t, server, host)
  return { port, connections: () => n, open, received: () => got }
}

/** A port on which nothing listens (it did a moment ago). */
async function deadPort (): Promise<number> {
  const server = createNetServer()
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', () => resolve()))
  const port = (server.address() as AddressInfo).port
  await new Promise<void>(resolve => server.close(() => resolve()))
  return port
}

interface Answer { status: number, head: string, socket: Socket, rest: Buffer }

/** Write raw bytes to the proxy's socket; the answer's status line and headers once they arrive. */
async function send (t: T, path: string, text: string): Promise<Answer> {
  const socket = connect(path)
  socket.on('error', () => {})
  t.teardown(() => socket.destroy())
  socket.write(text)
  return await new Promise<Answer>((resolve, reject) => {
    let buf = Buffer.alloc(0)
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d])
      const end = buf.indexOf('\r\n\r\n')
      if (end < 0) return
      socket.off('data', onData)
      socket.pause()
      const head = buf.subarray(0, end).toString()
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3}) /.exec(head)?.[1] ?? 0), head, socket, rest: buf.subarray(end + 4) })
    }
    socket.on('data', onData)
    socket.once('close', () => reject(new Error(`closed before an answer: ${JSON.stringify(buf.toString())}`)))
  })
}

const connectTo = async (t: T, path: string, target: string): Promise<Answer> => await send(t, path, `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`)

/** Everything else the proxy sends until it closes the connection. */
async function rest (a: Answer): Promise<string> {
  let text = a.rest.toString()
  a.socket.on('data', d => { text += d.toString() })
  a.socket.resume()
  await new Promise<void>(resolve => a.socket.once('close', () => resolve()))
  return text
}

/** The next bytes the client receives through a tunnel (within 5 s). */
async function nextData (socket: Socket): Promise<string> {
  return await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('nothing came through the tunnel')), 5000)
    socket.once('data', d => {
      clearTimeout(timer)
      resolve(d.toString())
    })
    socket.resume()
  })
}

async function eventually (check: () => boolean, ms = 5000): Promise<boolean> {
  const until = Date.now() + ms
  while (Date.now() < until) {
    if (check()) return true
    await sleep(20)
  }
  return check()
}

test('isPublicAddress: the public internet only', async t => {
  for (const ip of ['8.8.8.8', '1.1.1.1', '2606:4700::1111', '::ffff:8.8.8.8', '2a00:1450:4001:82b::200e', '64:ff9b::808:808', '2002:808:808::1', '100.63.255.255', '100.128.0.1', '172.32.0.1', '198.20.0.1']) {
    t.equal(isPublicAddress(ip), true, `${ip} is public`)
  }
  const special = [
    '0.0.0.0', '0.1.2.3', '10.0.0.1', '10.255.255.255', '100.64.0.1', '100.127.255.254', '127.0.0.1', '127.1.2.3',
    '169.254.169.254', '172.16.0.1', '172.31.255.255', '192.0.0.8', '192.0.2.1', '192.88.99.1', '192.168.1.1',
    '198.18.0.1', '198.19.255.255', '198.51.100.7', '203.0.113.9', '224.0.0.1', '239.255.255.250', '240.0.0.1',
    '255.255.255.255',
    '::', '::1', '::ffff:127.0.0.1', '::ffff:7f00:1', '::ffff:10.0.0.1', '::ffff:169.254.169.254', '64:ff9b::7f00:1',
    '64:ff9b::a00:1', '64:ff9b:1::7f00:1', '100::1', '2001::1', '2001:0:4136:e378:8000:63bf:3fff:fdd2', '2001:2::1',
    '2001:db8::1', '2002:7f00:1::1', '2002:a00:1::1', 'fc00::1', 'fd00::1', 'fe80::1', 'fe80::1%lo', 'febf::1', 'fec0::1',
    'ff02::1', 'ff0e::1', '::7f00:1'
  ]
  for (const ip of special) t.equal(isPublicAddress(ip), false, `${ip} is not public`)
  for (const junk of ['', 'localhost', 'example.com', '8.8.8', '8.8.8.8.8', '256.1.1.1', '08.8.8.8', '::g', '1:2:3:4:5:6:7:8:9', ' 8.8.8.8', '[2606:4700::1111]']) {
    t.equal(isPublicAddress(junk), false, `${JSON.stringify(junk)} is not an address`)
  }
})

test('by default nothing on this machine or its networks is reached', async t => {
  const v4 = await pongTarget(t, '127.0.0.1')
  const v6 = await pongTarget(t, '::1')
  const asked: string[] = []
  const { path, refusals } = await startProxy(t, {
    resolve: async host => {
      asked.push(host)
      return host === 'internal.test' ? [{ address: '127.0.0.1', family: 4 }, { address: '10.0.0.1', family: 4 }] : []
    }
  })
  const port = v4.port
  for (const target of [`127.0.0.1:${port}`, `localhost:${port}`, `LocalHost.:${port}`, `api.localhost:${port}`, `[::1]:${v6.port}`, `[::ffff:127.0.0.1]:${port}`, `internal.test:${port}`, `127.1:${port}`, '169.254.169.254:80']) {
    const a = await connectTo(t, path, target)
    t.equal(a.status, 403, `CONNECT ${target} is refused`)
    t.match(await rest(a), /public internet addresses only/, 'saying why')
  }
  const get = await send(t, path, `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`)
  t.equal(get.status, 403, 'a plain-HTTP request to loopback is refused')
  await rest(get)
  const get6 = await send(t, path, `GET http://[::1]:${v6.port}/ HTTP/1.1\r\nHost: [::1]:${v6.port}\r\n\r\n`)
  t.equal(get6.status, 403, 'and to IPv6 loopback')
  await rest(get6)
  await sleep(50)
  t.equal(v4.connections(), 0, 'the IPv4 target saw no connection')
  t.equal(v6.connections(), 0, 'the IPv6 target saw no connection')
  t.same(asked, ['internal.test'], 'only the name was resolved: not localhost, not IP literals')
  t.ok(refusals.length >= 11 && refusals.every(r => r.run === 'run-1'), 'every refusal was reported with its run')
  t.ok(refusals.some(r => r.host === 'internal.test' && r.port === port && /non-public/.test(r.why)), 'with host, port and reason')
})

test('with a reachable target, CONNECT tunnels bytes and plain HTTP is forwarded and streamed', async t => {
  const target = await pongTarget(t)
  let release = (): void => {}
  const released = new Promise<void>(resolve => { release = resolve })
  const seen: Array<{ method: string, url: string, headers: IncomingHttpHeaders, body: string }> = []
  const origin = createHttpServer((req, res) => {
    let body = ''
    req.on('data', d => { body += d.toString() })
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body })
      if (req.url === '/x') {
        res.writeHead(200, { 'content-type': 'text/plain', 'x-origin': 'yes', 'keep-alive': 'timeout=99' })
        res.write('first;')
        // The rest only once the client has the first part: a buffering proxy never gets there.
        void released.then(() => res.end('second'))
      } else {
        res.writeHead(201, { 'content-type': 'text/plain' })
        res.end(`got ${body}`)
      }
    })
  })
  const httpPort = await listening(t, origin, '127.0.0.1')
  const { path, proxy } = await startProxy(t, {
    reachable: () => true,
    resolve: async host => host === 'example.test' ? [{ address: '127.0.0.1', family: 4 }] : []
  })

  const tunnel = await connectTo(t, path, `example.test:${target.port}`)
  t.equal(tunnel.status, 200, 'the tunnel is established')
  t.match(tunnel.head, /^HTTP\/1\.1 200 Connection Established$/)
  tunnel.socket.write('ping')
  t.equal(await nextData(tunnel.socket), 'pong:ping', 'bytes go through and back')
  t.equal(target.received(), 'ping', 'the target got exactly what was sent')
  t.equal(proxy.connections, 1, 'one connection is open')
  tunnel.socket.destroy()

  const answer = await new Promise<{ status: number, headers: IncomingHttpHeaders, chunks: string[] }>((resolve, reject) => {
    const req = request({
      socketPath: path,
      agent: false,
      path: `http://example.test:${httpPort}/x`,
      headers: { 'proxy-connection': 'keep-alive', 'proxy-authorization': 'Basic c2VjcmV0', connection: 'keep-alive, x-hop', 'x-hop': 'one hop', 'x-end': 'to the end' }
    }, res => {
      const chunks: string[] = []
      res.on('data', d => {
        chunks.push(d.toString())
        if (chunks.length === 1) release()
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, chunks }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
    setTimeout(() => reject(new Error('no complete answer within 5 s: is the proxy buffering?')), 5000).unref()
  })
  t.equal(answer.status, 200)
  t.equal(answer.chunks.join(''), 'first;second', 'the answer came back whole')
  t.equal(answer.chunks[0], 'first;', 'its first part arrived before the origin sent the rest')
  t.equal(answer.headers['x-origin'], 'yes', 'with the origin\'s headers')
  t.notMatch(String(answer.headers['keep-alive']), /99/, 'but not its hop-by-hop ones (Keep-Alive is the proxy\'s own)')
  const got = seen[0]
  t.equal(got?.url, '/x', 'the origin got the path in origin form')
  t.equal(got?.headers.host, `example.test:${httpPort}`, 'and the host of the URL')
  t.equal(got?.headers['proxy-connection'], undefined, 'no Proxy-Connection')
  t.equal(got?.headers['proxy-authorization'], undefined, 'no Proxy-Authorization')
  t.equal(got?.headers['x-hop'], undefined, 'no header the Connection header named')
  t.equal(got?.headers['x-end'], 'to the end', 'end-to-end headers go through')

  const posted = await new Promise<{ status: number, body: string }>((resolve, reject) => {
    const req = request({ socketPath: path, agent: false, method: 'POST', path: `http://example.test:${httpPort}/upload?a=1` }, res => {
      let body = ''
      res.on('data', d => { body += d.toString() })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.write('hello ')
    setTimeout(() => req.end('world'), 50)
  })
  t.equal(posted.status, 201)
  t.equal(posted.body, 'got hello world', 'a chunked body reaches the origin and its answer comes back')
  t.equal(seen[1]?.url, '/upload?a=1', 'with its query')
  t.equal(seen[1]?.headers['transfer-encoding'], 'chunked', 're-chunked on the way')
})

test('an allow-list lets its hosts through and nothing else', async t => {
  const target = await pongTarget(t)
  const { path, refusals } = await startProxy(t, {
    allow: ['*.allowed.test', 'exact.test'],
    reachable: () => true,
    resolve: async () => [{ address: '127.0.0.1', family: 4 }]
  })
  const cases: Array<[string, number]> = [['a.allowed.test', 200], ['deep.a.allowed.test', 200], ['allowed.test', 403], ['EXACT.test.', 200], ['other.test', 403], ['sub.exact.test', 403], ['notallowed.test', 403], ['127.0.0.1', 403]]
  let admitted = 0
  for (const [host, status] of cases) {
    const before = target.connections()
    const a = await connectTo(t, path, `${host}:${target.port}`)
    t.equal(a.status, status, `${host}: ${status}`)
    if (status === 200) {
      admitted++
      a.socket.write(host)
      t.equal(await nextData(a.socket), `pong:${host}`, `${host} reaches the target`)
      a.socket.destroy()
    } else {
      t.match(await rest(a), /allow-list/, 'the refusal names the allow-list')
      await sleep(20)
      t.equal(target.connections(), before, `the target saw nothing of ${host}`)
    }
  }
  t.equal(target.connections(), admitted, 'the target saw only the allowed hosts')
  t.ok(refusals.some(r => r.host === 'other.test'), 'refusals are reported')

  const get = await send(t, path, `GET http://other.test:${target.port}/ HTTP/1.1\r\nHost: other.test\r\n\r\n`)
  t.equal(get.status, 403, 'plain HTTP follows the allow-list too')
  await rest(get)
  t.throws(() => new EgressProxy({ allow: ['bad/name'] }), /not a host name/, 'an entry that is no host name is an error')
})

test('closing a listener cuts its tunnels and removes its socket', async t => {
  const target = await pongTarget(t)
  const { path, dir, proxy, stop } = await startProxy(t, { reachable: () => true })
  const a = await connectTo(t, path, `127.0.0.1:${target.port}`)
  t.equal(a.status, 200)
  a.socket.write('hi')
  t.equal(await nextData(a.socket), 'pong:hi', 'the tunnel works')
  t.equal(proxy.connections, 1)
  t.equal(target.open.size, 1, 'the target has the connection')
  const cut = new Promise<void>(resolve => a.socket.once('close', () => resolve()))
  await stop()
  await cut
  t.pass('the client\'s tunnel was cut')
  t.ok(await eventually(() => target.open.size === 0), 'and the target\'s end closed')
  t.notOk(existsSync(path), 'the socket file is gone')
  t.equal(proxy.connections, 0, 'no connection is left')
  const refused = await new Promise<string>(resolve => {
    const s = connect(path)
    s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? ''))
    s.on('connect', () => { s.destroy(); resolve('connected') })
  })
  t.equal(refused, 'ENOENT', 'nobody can connect any more')
  await stop()
  t.pass('closing twice is harmless')

  // close() stops every listener.
  const second = join(dir, 'second.sock')
  await proxy.listen(second, 'run-2')
  const b = await connectTo(t, second, `127.0.0.1:${target.port}`)
  t.equal(b.status, 200)
  const cutB = new Promise<void>(resolve => b.socket.once('close', () => resolve()))
  await proxy.close()
  await cutB
  t.notOk(existsSync(second), 'close() removes every socket file')
  t.equal(proxy.connections, 0)
})

test('the socket is the run\'s alone: mode 0600, its owner, never an existing file', async t => {
  const { path, dir, proxy } = await startProxy(t)
  t.equal(statSync(path).mode & 0o777, 0o600, 'mode 0600')
  t.ok(statSync(path).isSocket())
  const taken = join(dir, 'taken')
  writeFileSync(taken, 'keep me')
  await t.rejects(proxy.listen(taken, 'run-3'), /EEXIST/, 'an existing file at the path is an error')
  t.equal(readFileSync(taken, 'utf8'), 'keep me', 'and it is left as it was')
  t.equal(proxy.connections, 0)
  if (process.getuid?.() === 0) {
    const owned = join(dir, 'owned.sock')
    await proxy.listen(owned, 'run-4', { uid: 12345, gid: 12345 })
    const st = statSync(owned)
    t.equal(st.uid, 12345, 'owned by the run\'s uid')
    t.equal(st.gid, 12345, 'and gid')
    t.equal(st.mode & 0o777, 0o600)
  }
})

test('beyond maxConnections, new connections get 503', async t => {
  const target = await pongTarget(t)
  const { path, proxy } = await startProxy(t, { reachable: () => true, maxConnections: 2 })
  const one = await connectTo(t, path, `127.0.0.1:${target.port}`)
  const two = await connectTo(t, path, `127.0.0.1:${target.port}`)
  t.equal(one.status, 200)
  t.equal(two.status, 200)
  const three = await connectTo(t, path, `127.0.0.1:${target.port}`)
  t.equal(three.status, 503, 'the third simultaneous one is refused')
  t.match(await rest(three), /too many connections/)
  t.equal(target.connections(), 2, 'the target saw only two')
  one.socket.destroy()
  t.ok(await eventually(() => proxy.connections === 1), 'a closed tunnel frees its place')
  const four = await connectTo(t, path, `127.0.0.1:${target.port}`)
  t.equal(four.status, 200, 'so a new one gets through')
})

test('names that do not resolve and targets that do not answer: 502; bad requests: 400', async t => {
  const { path, refusals } = await startProxy(t, {
    reachable: () => true,
    resolve: async host => { throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' }) }
  })
  const unresolved = await connectTo(t, path, 'nowhere.test:443')
  t.equal(unresolved.status, 502, 'an unresolvable name')
  t.match(await rest(unresolved), /could not be resolved/)
  t.ok(refusals.some(r => r.host === 'nowhere.test' && r.port === 443), 'reported')

  const dead = await deadPort()
  const refused = await connectTo(t, path, `127.0.0.1:${dead}`)
  t.equal(refused.status, 502, 'a port where nothing listens')
  t.match(await rest(refused), /could not be reached/)
  const getDead = await send(t, path, `GET http://127.0.0.1:${dead}/ HTTP/1.1\r\nHost: x\r\n\r\n`)
  t.equal(getDead.status, 502, 'plain HTTP too')
  await rest(getDead)

  for (const target of ['127.0.0.1:0', '127.0.0.1:70000', '127.0.0.1', 'a/b:443', '[::1:443']) {
    const a = await connectTo(t, path, target)
    t.equal(a.status, 400, `CONNECT ${target} is a bad request`)
    await rest(a)
  }
  const originForm = await send(t, path, 'GET /x HTTP/1.1\r\nHost: example.test\r\n\r\n')
  t.equal(originForm.status, 400, 'an origin-form request is a bad request')
  t.match(await rest(originForm), /absolute-form/)
  const upgrade = await send(t, path, 'GET http://example.test/ws HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n')
  t.equal(upgrade.status, 501, 'an upgrade is refused')
  await rest(upgrade)
})
