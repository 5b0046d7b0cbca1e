import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { randomBytes, timingSafeEqual, createHash } from 'node:crypto'
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net'
import { chmodSync, chownSync, rmSync } from 'node:fs'
import { RUN_MARKER_VAR } from './proc.js'
import { socketPeer } from './peer.js'
import type { Environment } from '../config.js'

/** The operator's credential, as the broker sends it upstream. */
export type Credential = { kind: 'api_key', value: string } | { kind: 'oauth', value: string } | { kind: 'bearer', value: string }

/** Paths of the Messages API the CLI uses; anything else is refused. */
const ALLOWED = [/^\/v1\/messages(\?.*)?$/, /^\/v1\/messages\/count_tokens(\?.*)?$/]
/** Request headers never forwarded (hop-by-hop, or credentials the broker replaces). */
const DROP_REQUEST = new Set(['host', 'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'x-api-key', 'authorization', 'proxy-authorization', 'te', 'trailer'])
const DROP_RESPONSE = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-authenticate', 'trailer'])

/** An error answered in the Anthropic API's own shape, which the CLI reports as it is. */
function refuseWith (res: ServerResponse, status: number, type: string, message: string): void {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify({ type: 'error', error: { type, message } }))
}

/** Stop a run's socket: no new connections, the socket file gone (open ones end with their requests). */
function closeListener (l: NetServer): void {
  const path = l.address()
  l.close()
  if (typeof path === 'string') rmSync(path, { force: true })
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest()

/**
 * The operator's credential from the server's environment, or null when the CLI authenticates
 * otherwise (a provider the broker cannot front, such as Bedrock or Vertex, or a stored login).
 */
export function operatorCredential (env: Environment): Credential | null {
  if (isCloudProvider(env)) return null
  const nonEmpty = (k: string): string | undefined => env[k] !== undefined && env[k] !== '' ? env[k] : undefined
  const apiKey = nonEmpty('ANTHROPIC_API_KEY')
  if (apiKey !== undefined) return { kind: 'api_key', value: apiKey }
  const bearer = nonEmpty('ANTHROPIC_AUTH_TOKEN')
  if (bearer !== undefined) return { kind: 'bearer', value: bearer }
  const oauth = nonEmpty('CLAUDE_CODE_OAUTH_TOKEN')
  if (oauth !== undefined) return { kind: 'oauth', value: oauth }
  return null
}

/** Bedrock, Vertex, Foundry: the CLI talks to the cloud with credentials of its own. */
export function isCloudProvider (env: Environment): boolean {
  return ['CLAUDE_CODE_USE_BEDROCK', 'CLAUDE_CODE_USE_VERTEX', 'CLAUDE_CODE_USE_FOUNDRY'].some(k => env[k] !== undefined && env[k] !== '' && env[k] !== '0')
}

/** The variables of the operator's credential and routing, which a run never gets when brokered. */
export const BROKERED_VARS = ['ANTHROPIC_API_KEY', 'ANTHROPIC_AUTH_TOKEN', 'CLAUDE_CODE_OAUTH_TOKEN', 'ANTHROPIC_BASE_URL', 'ANTHROPIC_CUSTOM_HEADERS']

interface Grant {
  runId: string
  digest: Buffer
  inflight: Set<IncomingMessage>
  /** False while no run holds it (a parked spare's token): refused. */
  active: boolean
  /** The identity whose processes alone may use it (with agent identities). */
  uid?: number
  /** The run marker the process using it must carry (with agent identities). */
  marker?: string
  /** Served on a socket of its own (a sandboxed run's network): accepted from nowhere else. */
  bound?: boolean
}

/** Who may use a token: whether it works yet, and from which processes. */
export interface GrantOptions {
  /** Issued for a parked spare: refused until `activate()`, when a run claims the spare. */
  inert?: boolean
  /** Only processes of this uid carrying this run marker may use it (agent identities). */
  uid?: number
  marker?: string
}

/** What one run's environment gets instead of the operator's credential. */
export interface RunCredential {
  env: Record<string, string>
  /** End the token: refused from now on, requests in flight cut. Idempotent. */
  revoke: () => void
  /** An inert token starts working (its spare was claimed by a run). */
  activate: () => void
  /** And stops again (the claim was refused): requests in flight cut. */
  deactivate: () => void
  /**
   * Serve this token on a UNIX socket of its own at `path` (owned by `owner`, mode 0600), for a run
   * whose network namespace has no other way out: connections from it may use this token only,
   * and the token is accepted from nowhere else from now on. Closed when the token is revoked.
   */
  listen: (path: string, owner?: { uid: number, gid: number }) => void
}

/**
 * The credential broker: the Anthropic API served on loopback for the server's own runs. Each run
 * gets a token of its own instead of the operator's credential; the broker checks it, puts the
 * real credential in its place, forwards the request to the operator's upstream and streams the
 * answer back unbuffered. A token works only for its run, only for the Messages API, and only
 * until the run ends.
 */
export class CredentialBroker {
  private server: Server | undefined
  private url = ''
  private readonly grants = new Map<string, Grant>()
  /** Runs' own sockets, open now. */
  private readonly listeners = new Set<NetServer>()
  /** Connections that came through a run's own socket, and the grant that socket serves. */
  private readonly boundTo = new WeakMap<Socket, Grant>()
  /** Per connection: whether its process may use the token it presented. */
  private readonly peers = new WeakMap<Socket, { grant: string, ok: Promise<boolean> }>()
  private readonly upstream: URL

  constructor (private readonly credential: Credential, upstream: string | undefined, private readonly onError: (err: Error) => void = () => {}) {
    this.upstream = new URL(upstream !== undefined && upstream !== '' ? upstream : 'https://api.anthropic.com')
  }

  /** Listen on an ephemeral loopback port. */
  async start (): Promise<void> {
    const server = createServer((req, res) => this.handle(req, res))
    server.keepAliveTimeout = 5000
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => resolve())
    })
    this.server = server
    this.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  }

  /** The broker's address (for tests and the log). */
  get address (): string { return this.url }

  /** Its port on loopback: a sandboxed run reaches it on the same port of its own loopback. */
  get port (): number { return Number(new URL(this.url).port) }

  /** A token for one run: the variables its environment gets. */
  issue (runId: string, opts: GrantOptions = {}): RunCredential {
    const token = 'sk-ant-run-' + randomBytes(32).toString('base64url')
    const grant: Grant = {
      runId,
      digest: digest(token),
      inflight: new Set(),
      active: opts.inert !== true,
      ...(opts.uid !== undefined ? { uid: opts.uid } : {}),
      ...(opts.marker !== undefined ? { marker: opts.marker } : {})
    }
    this.grants.set(token, grant)
    const listeners: NetServer[] = []
    // The CLI authenticates the way the operator's credential does, with the run's token in its place.
    const env: Record<string, string> = { ANTHROPIC_BASE_URL: this.url }
    if (this.credential.kind === 'oauth') env.CLAUDE_CODE_OAUTH_TOKEN = token
    else if (this.credential.kind === 'bearer') env.ANTHROPIC_AUTH_TOKEN = token
    else env.ANTHROPIC_API_KEY = token
    return {
      env,
      revoke: () => {
        for (const l of listeners.splice(0)) closeListener(l)
        if (this.grants.get(token) !== grant) return
        this.grants.delete(token)
        for (const req of grant.inflight) req.destroy()
      },
      listen: (path, owner) => {
        const http = this.server
        if (http === undefined) throw new Error('the credential broker is not started')
        const l = createNetServer(socket => {
          this.boundTo.set(socket, grant)
          http.emit('connection', socket)
        })
        // An error (EMFILE, a path too long) is the launch's to report, never an uncaught one.
        l.on('error', err => this.onError(err))
        // Bound synchronously (a UNIX socket), so its mode and owner are set before anyone can connect.
        l.listen(path)
        try {
          chmodSync(path, 0o600)
          if (owner !== undefined) chownSync(path, owner.uid, owner.gid)
        } catch (err) {
          l.close()
          throw err
        }
        grant.bound = true
        listeners.push(l)
        this.listeners.add(l)
        l.once('close', () => this.listeners.delete(l))
      },
      activate: () => { grant.active = true },
      deactivate: () => {
        grant.active = false
        for (const req of grant.inflight) req.destroy()
      }
    }
  }

  /** Runs holding a live token now. */
  get activeGrants (): number {
    return this.grants.size
  }

  async close (): Promise<void> {
    for (const g of this.grants.values()) for (const req of g.inflight) req.destroy()
    this.grants.clear()
    for (const l of [...this.listeners]) closeListener(l)
    const server = this.server
    if (server === undefined) return
    server.closeAllConnections()
    await new Promise<void>(resolve => server.close(() => resolve()))
  }

  private grantOf (req: IncomingMessage): Grant | undefined {
    const key = req.headers['x-api-key']
    const auth = req.headers.authorization
    const presented = typeof key === 'string' ? key : typeof auth === 'string' ? /^Bearer\s+(\S+)$/i.exec(auth)?.[1] : undefined
    if (presented === undefined) return undefined
    const grant = this.grants.get(presented)
    // Map lookup finds it; the constant-time compare keeps the check honest against a forged map key.
    return grant !== undefined && timingSafeEqual(grant.digest, digest(presented)) ? grant : undefined
  }

  /**
   * Whether the request comes from a process of the token's run: its identity's uid, carrying its
   * marker (found through the connection's socket in /proc). Decided once per connection.
   */
  private async fromItsRun (req: IncomingMessage, grant: Grant): Promise<boolean> {
    if (grant.uid === undefined) return true
    const socket = req.socket
    const known = this.peers.get(socket)
    if (known?.grant === grant.runId) return await known.ok
    const ok = socketPeer(
      { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 },
      { address: socket.localAddress ?? '', port: socket.localPort ?? 0 },
      grant.marker !== undefined ? { name: RUN_MARKER_VAR, value: grant.marker } : undefined
    ).then(peer => peer !== null && peer.uid === grant.uid, () => false)
    this.peers.set(socket, { grant: grant.runId, ok })
    return await ok
  }

  private handle (req: IncomingMessage, res: ServerResponse): void {
    const path = req.url ?? '/'
    // The CLI checks connectivity with a HEAD of the base URL: answered here, nothing forwarded.
    if ((req.method === 'HEAD' || req.method === 'GET') && (path === '/' || path === '')) {
      res.writeHead(200).end()
      return
    }
    const refuse = (status: number, type: string, message: string): void => refuseWith(res, status, type, message)
    const grant = this.grantOf(req)
    if (grant === undefined) return refuse(401, 'authentication_error', 'invalid or expired run token')
    if (!grant.active) return refuse(401, 'authentication_error', 'this run token belongs to no live run')
    const bound = this.boundTo.get(req.socket)
    // Through a run's own socket only that run's token; a token served so, only through it.
    if (bound !== undefined || grant.bound === true) {
      if (bound !== grant) return refuse(401, 'authentication_error', 'this run token is not for this connection')
      return this.forward(req, res, grant)
    }
    if (grant.uid === undefined) return this.forward(req, res, grant)
    // The body waits in the socket (paused) while the process behind the connection is looked up.
    req.pause()
    void this.fromItsRun(req, grant).then(ok => {
      if (!ok) return refuse(401, 'authentication_error', 'this run token is not for this process')
      // Revoked, or inert again, meanwhile.
      if (!grant.active || this.grantOf(req) !== grant) return refuse(401, 'authentication_error', 'invalid or expired run token')
      this.forward(req, res, grant)
    })
  }

  /** Send an authorised request upstream with the operator's credential, streaming the answer back. */
  private forward (req: IncomingMessage, res: ServerResponse, grant: Grant): void {
    const path = req.url ?? '/'
    const refuse = (status: number, type: string, message: string): void => refuseWith(res, status, type, message)
    if (req.method !== 'POST' || !ALLOWED.some(p => p.test(path))) return refuse(403, 'permission_error', `the run token is for the Messages API only, not ${req.method ?? ''} ${path.split('?')[0] ?? ''}`)

    const headers: Record<string, string | string[]> = {}
    for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !DROP_REQUEST.has(k)) headers[k] = v
    const c = this.credential
    if (c.kind === 'api_key') headers['x-api-key'] = c.value
    else headers.authorization = `Bearer ${c.value}`
    const base = this.upstream.pathname.replace(/\/$/, '')
    const target = new URL(base + path, this.upstream)
    grant.inflight.add(req)
    const send = target.protocol === 'https:' ? httpsRequest : httpRequest
    const upstream = send(target, { method: 'POST', headers }, up => {
      const out: Record<string, string | string[]> = {}
      for (const [k, v] of Object.entries(up.headers)) if (v !== undefined && !DROP_RESPONSE.has(k)) out[k] = v
      res.writeHead(up.statusCode ?? 502, out)
      // Streamed as it comes: every SSE event reaches the CLI the moment it arrives.
      res.flushHeaders()
      up.pipe(res)
      up.on('error', () => res.destroy())
    })
    upstream.on('error', (err) => {
      this.onError(err)
      if (!res.headersSent) refuse(502, 'api_error', 'the upstream API could not be reached')
      else res.destroy()
    })
    req.pipe(upstream)
    const done = (): void => {
      grant.inflight.delete(req)
      upstream.destroy()
    }
    // The response ends, or the CLI hangs up, or the token is revoked (its request destroyed).
    res.on('close', done)
  }
}
