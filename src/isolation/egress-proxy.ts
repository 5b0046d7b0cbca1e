import { createServer, request as httpRequest, STATUS_CODES, type IncomingMessage, type IncomingHttpHeaders, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http'
import { connect, isIP, type Socket } from 'node:net'
import { isPublicAddress, outsideHost } from './public-address.js'

export { isPublicAddress }
import { lookup } from 'node:dns/promises'
import { chmodSync, chownSync, linkSync, lstatSync, mkdtempSync, rmSync, unlinkSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { domainToASCII } from 'node:url'
import type { Duplex } from 'node:stream'

/** How a run's internet access is filtered. */
export interface EgressOptions {
  /** Domain allow-list (RUN_EGRESS_ALLOW). Empty/undefined: any public host. Entries: `example.com` (that host exactly), `*.example.com` (its subdomains, not itself), matched case-insensitively after normalising (lower case, trailing dot removed, IDN via `domainToASCII` from node:url). */
  allow?: string[]
  /** Name resolution (tests inject one); default: dns.promises.lookup(host, { all: true, verbatim: true }). */
  resolve?: (host: string) => Promise<Array<{ address: string, family: number }>>
  /** Whether an address may be reached; default `isPublicAddress`. Tests inject one to reach a loopback target. */
  reachable?: (address: string) => boolean
  /** Told of each refusal and of errors (for the server's log). */
  onRefused?: (o: { run: string, host: string, port: number, why: string }) => void
  /** Max simultaneous connections per listener (default 256); beyond it, new ones are refused with 503. */
  maxConnections?: number
  /** Upstream connect timeout in ms (default 10_000). */
  connectTimeoutMs?: number
}

const noop = (): void => {}

/**
 * A host name as the policy compares it: lower case, no trailing dot, IDN in ASCII, IPv4 in
 * dotted form; null when it is no host name (characters a name cannot have).
 */
function normaliseHost (raw: string): string | null {
  let h = raw.toLowerCase()
  if (h.endsWith('.')) h = h.slice(0, -1)
  if (isIP(h) === 6) return h.includes('%') ? null : h
  // domainToASCII cuts a name at / ? # and decodes %: such names are refused, not reinterpreted.
  if (h === '' || !/^(?:[a-z0-9._-]|\P{ASCII})+$/u.test(h)) return null
  const ascii = domainToASCII(h)
  return ascii === '' ? null : ascii
}

/** `host:port` of a CONNECT request (`[v6]:port` for IPv6); null when it is not one. */
function parseAuthority (target: string): { host: string, port: number } | null {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(target) ?? /^([^:[\]]+):(\d{1,5})$/.exec(target)
  if (m === null) return null
  return { host: m[1] ?? '', port: Number(m[2]) }
}

/** Headers that concern one hop only, never forwarded (nor any the Connection header names). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host'])

function endToEnd (headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const named = new Set<string>()
  for (const h of [headers.connection, headers['proxy-connection']]) {
    for (const v of Array.isArray(h) ? h : [h]) for (const token of (v ?? '').split(',')) named.add(token.trim().toLowerCase())
  }
  const out: OutgoingHttpHeaders = {}
  for (const [k, v] of Object.entries(headers)) if (v !== undefined && !HOP_BY_HOP.has(k) && !named.has(k)) out[k] = v
  return out
}

/** Where a request may go, or why it may not. */
type Verdict = { ok: true, address: string } | { ok: false, status: number, why: string }

/** One run's listener: its server and everything open through it. */
interface Listener {
  run: string
  server: Server
  /** Every connection from the run (including those refused for the limit, until they close). */
  sockets: Set<Socket>
  /** The connections within the limit. */
  admitted: Set<Socket>
  /** Connections to the internet, made for this run. */
  upstream: Set<Socket>
  closed: boolean
  /** Stops it (once; later calls wait for the first). */
  stop: () => Promise<void>
}

/**
 * The egress proxy: a sandboxed run's only way to the internet. Its network namespace has
 * loopback only, and a relay inside the sandbox forwards a local port to this proxy's socket for
 * the run. It speaks the HTTP proxy protocol (CONNECT tunnels, plain-HTTP absolute-form requests)
 * and reaches public internet addresses only, of the allow-list's hosts when there is one: never
 * the host's loopback, its private networks, the cloud's metadata address. It connects to the
 * address it checked itself, so a name cannot resolve to another address in between.
 */
export class EgressProxy {
  private readonly listeners = new Set<Listener>()
  private readonly exact = new Set<string>()
  private readonly suffixes: string[] = []
  private readonly resolve: (host: string) => Promise<Array<{ address: string, family: number }>>
  private readonly reachable: (address: string) => boolean
  private readonly onRefused: (o: { run: string, host: string, port: number, why: string }) => void
  private readonly maxConnections: number
  private readonly connectTimeoutMs: number

  constructor (o: EgressOptions = {}) {
    for (const entry of o.allow ?? []) {
      const e = entry.trim()
      if (e === '') continue
      const wildcard = e.startsWith('*.')
      const host = normaliseHost(wildcard ? e.slice(2) : e)
      if (host === null) throw new Error(`egress allow-list: ${entry} is not a host name`)
      if (wildcard) this.suffixes.push('.' + host)
      else this.exact.add(host)
    }
    this.resolve = o.resolve ?? (async host => await lookup(host, { all: true, verbatim: true }))
    this.reachable = o.reachable ?? outsideHost()
    this.onRefused = o.onRefused ?? noop
    this.maxConnections = o.maxConnections ?? 256
    this.connectTimeoutMs = o.connectTimeoutMs ?? 10_000
  }

  /**
   * Listen for one run on a UNIX socket at `path` (mode 0600, chowned to `owner` when given; an
   * existing file at `path` is an error). Returns a function that stops that listener, destroys
   * its open connections and tunnels, and removes the socket file.
   */
  async listen (path: string, run: string, owner?: { uid: number, gid: number }): Promise<() => Promise<void>> {
    const server = createServer()
    let stopping: Promise<void> | undefined
    const l: Listener = {
      run,
      server,
      sockets: new Set(),
      admitted: new Set(),
      upstream: new Set(),
      closed: false,
      stop: async () => {
        stopping ??= (async () => {
          l.closed = true
          this.listeners.delete(l)
          const stopped = new Promise<void>(resolve => server.close(() => resolve()))
          for (const s of l.sockets) s.destroy()
          for (const s of l.upstream) s.destroy()
          await stopped
          try {
            if (lstatSync(path).isSocket()) unlinkSync(path)
          } catch {}
        })()
        await stopping
      }
    }
    server.on('connection', (socket: Socket) => {
      socket.on('error', noop)
      l.sockets.add(socket)
      if (l.admitted.size < this.maxConnections) l.admitted.add(socket)
      socket.on('close', () => {
        l.sockets.delete(socket)
        l.admitted.delete(socket)
      })
      if (l.closed) socket.destroy()
    })
    server.on('request', (req: IncomingMessage, res: ServerResponse) => { void this.forward(l, req, res) })
    server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => { void this.tunnel(l, req, socket as Socket, head) })
    server.on('upgrade', (req: IncomingMessage, socket: Duplex) => {
      socket.on('error', noop)
      this.refuseSocket(l, socket as Socket, 501, 'protocol upgrades are not proxied (use CONNECT)', '', 0)
    })
    server.on('error', (err: Error) => this.onRefused({ run, host: '', port: 0, why: `listener error: ${err.message}` }))

    // Bound in a private directory, given its mode and owner, then linked into place: the socket
    // is never reachable at `path` with a looser mode, and an existing file there fails the link.
    const dir = mkdtempSync(join(dirname(path), '.egress-'))
    try {
      const bound = join(dir, 's')
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(bound, () => {
          server.removeListener('error', reject)
          resolve()
        })
      })
      chmodSync(bound, 0o600)
      if (owner !== undefined) chownSync(bound, owner.uid, owner.gid)
      linkSync(bound, path)
    } catch (err) {
      server.close()
      throw err
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
    this.listeners.add(l)
    return l.stop
  }

  /** Stop every listener. */
  async close (): Promise<void> {
    await Promise.all([...this.listeners].map(async l => await l.stop()))
  }

  /** Connections open now (all listeners), for tests and metrics. */
  get connections (): number {
    let n = 0
    for (const l of this.listeners) n += l.sockets.size
    return n
  }

  /** Whether the run may reach `host:port`, and at which address. */
  private async verdict (rawHost: string, port: number): Promise<Verdict> {
    if (!Number.isInteger(port) || port < 1 || port > 65535) return { ok: false, status: 400, why: `bad port ${port}` }
    const host = normaliseHost(rawHost)
    if (host === null) return { ok: false, status: 400, why: 'not a valid host name' }
    if (!this.allowed(host)) return { ok: false, status: 403, why: `${host} is not on this run's egress allow-list` }
    if (host === 'localhost' || host.endsWith('.localhost')) return { ok: false, status: 403, why: `${host} is this machine: the proxy reaches public internet addresses only` }
    let addresses: Array<{ address: string }>
    if (isIP(host) !== 0) {
      addresses = [{ address: host }]
    } else {
      try {
        addresses = await this.resolve(host)
      } catch (err) {
        return { ok: false, status: 502, why: `${host} could not be resolved (${(err as Error).message})` }
      }
      if (addresses.length === 0) return { ok: false, status: 502, why: `${host} could not be resolved` }
    }
    const kept = addresses.find(a => this.reachable(a.address))
    if (kept === undefined) {
      return { ok: false, status: 403, why: isIP(host) !== 0 ? `${host} is not a public address: the proxy reaches public internet addresses only` : `${host} resolves only to non-public addresses: the proxy reaches public internet addresses only` }
    }
    return { ok: true, address: kept.address }
  }

  private allowed (host: string): boolean {
    if (this.exact.size === 0 && this.suffixes.length === 0) return true
    return this.exact.has(host) || this.suffixes.some(s => host.endsWith(s) && host.length > s.length)
  }

  /** A connection to an address checked already (no resolution here), within the connect timeout. */
  private async dial (l: Listener, address: string, port: number): Promise<Socket> {
    return await new Promise<Socket>((resolve, reject) => {
      const s = connect({ host: address, port, allowHalfOpen: true })
      l.upstream.add(s)
      const timer = setTimeout(() => s.destroy(new Error(`no connection within ${this.connectTimeoutMs} ms`)), this.connectTimeoutMs)
      s.on('error', (err: Error) => reject(err))
      s.once('connect', () => {
        clearTimeout(timer)
        resolve(s)
      })
      s.once('close', () => {
        clearTimeout(timer)
        l.upstream.delete(s)
        reject(new Error('closed'))
      })
      if (l.closed) s.destroy()
    })
  }

  /** Answer on a raw socket (CONNECT, upgrade) and close it. */
  private refuseSocket (l: Listener, socket: Socket, status: number, why: string, host: string, port: number): void {
    this.onRefused({ run: l.run, host, port, why })
    if (socket.destroyed) return
    const body = why + '\n'
    socket.on('end', () => socket.destroy())
    socket.resume()
    socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`)
    // A client that never hangs up does not keep the connection.
    setTimeout(() => socket.destroy(), 5000).unref()
  }

  /** CONNECT host:port: a byte tunnel to the checked address. */
  private async tunnel (l: Listener, req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
    socket.on('error', noop)
    const target = req.url ?? ''
    if (!l.admitted.has(socket)) return this.refuseSocket(l, socket, 503, `too many connections from this run (at most ${this.maxConnections})`, '', 0)
    const authority = parseAuthority(target)
    if (authority === null) return this.refuseSocket(l, socket, 400, 'CONNECT takes host:port', target, 0)
    const { host, port } = authority
    const v = await this.verdict(host, port)
    if (!v.ok) return this.refuseSocket(l, socket, v.status, v.why, host, port)
    if (l.closed || socket.destroyed) return
    let upstream: Socket
    try {
      upstream = await this.dial(l, v.address, port)
    } catch (err) {
      return this.refuseSocket(l, socket, 502, `${host}:${port} could not be reached (${(err as Error).message})`, host, port)
    }
    if (l.closed || socket.destroyed) {
      upstream.destroy()
      return
    }
    upstream.on('close', () => socket.destroy())
    socket.on('close', () => upstream.destroy())
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n')
    if (head.length > 0) upstream.write(head)
    upstream.pipe(socket)
    socket.pipe(upstream)
  }

  /** A plain-HTTP request in absolute form: sent to the checked address, the answer streamed back. */
  private async forward (l: Listener, req: IncomingMessage, res: ServerResponse): Promise<void> {
    req.on('error', noop)
    res.on('error', noop)
    const refuse = (status: number, why: string, host: string, port: number): void => {
      this.onRefused({ run: l.run, host, port, why })
      if (res.headersSent) {
        res.destroy()
        return
      }
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' })
      res.end(why + '\n')
      req.resume()
    }
    if (!l.admitted.has(req.socket)) return refuse(503, `too many connections from this run (at most ${this.maxConnections})`, '', 0)
    const raw = req.url ?? ''
    const m = /^http:\/\/([^/?#]*)([^#]*)/i.exec(raw)
    if (m === null) {
      return refuse(400, /^https:/i.test(raw) ? 'https goes through CONNECT' : 'the proxy takes CONNECT and absolute-form requests (GET http://host/path) only', '', 0)
    }
    let url: URL
    try {
      url = new URL(raw)
    } catch {
      return refuse(400, 'not a valid URL', '', 0)
    }
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
    const port = url.port === '' ? 80 : Number(url.port)
    const rest = m[2] ?? ''
    const path = rest === '' ? '/' : rest.startsWith('/') ? rest : '/' + rest

    const v = await this.verdict(host, port)
    if (!v.ok) return refuse(v.status, v.why, host, port)
    if (l.closed || req.destroyed) return
    let upstream: Socket
    try {
      upstream = await this.dial(l, v.address, port)
    } catch (err) {
      return refuse(502, `${host}:${port} could not be reached (${(err as Error).message})`, host, port)
    }
    if (l.closed || req.destroyed) {
      upstream.destroy()
      return
    }

    const headers = endToEnd(req.headers)
    headers.host = url.host
    // The body arrives decoded; re-chunked when it came chunked, as is when it has a length.
    if (req.headers['transfer-encoding'] !== undefined) {
      delete headers['content-length']
      headers['transfer-encoding'] = 'chunked'
    }
    let out
    try {
      out = httpRequest({ createConnection: () => upstream, method: req.method, path, headers })
    } catch (err) {
      upstream.destroy()
      return refuse(400, `the request cannot be forwarded (${(err as Error).message})`, host, port)
    }
    // The client hung up (or the answer is complete): whatever the origin does now is no refusal.
    let done = false
    out.on('error', (err: Error) => {
      upstream.destroy()
      if (!done) refuse(502, `${host}:${port} failed (${err.message})`, host, port)
    })
    out.on('response', (answer: IncomingMessage) => {
      answer.on('error', () => res.destroy())
      res.writeHead(answer.statusCode ?? 502, answer.statusMessage, endToEnd(answer.headers))
      res.flushHeaders()
      answer.pipe(res)
    })
    res.on('close', () => {
      done = true
      upstream.destroy()
    })
    req.pipe(out)
  }
}
