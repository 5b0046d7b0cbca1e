import { createHash } from 'node:crypto'
import { existsSync, lstatSync, mkdirSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { RunCredential } from './broker.js'
import type { EgressProxy } from './egress-proxy.js'

/**
 * A sandboxed run's network of its own (`RUN_NETWORK=egress|none`): bubblewrap gives it a network
 * namespace with nothing but its own loopback, so nothing on the host's loopback (the server, the
 * broker's TCP port, a database, other runs' ports) nor any link-local address is reachable. Two
 * ways lead out, each a UNIX socket of the run's own bound into its sandbox, where `socat` relays a
 * port of its loopback to it: the credential broker (on the broker's own port number, so the run's
 * `ANTHROPIC_BASE_URL` is unchanged) and, with `egress`, the filtering proxy (port 3128, named in
 * the run's `HTTPS_PROXY`/`HTTP_PROXY`). The design is that of Anthropic's sandbox-runtime.
 */

/** The port of the egress proxy inside a run's namespace. */
export const EGRESS_PORT = 3128

/** Relays the run's loopback ports to its sockets, waits until they listen, then becomes the CLI. */
const RELAY = `s=$1; bp=$2; bs=$3; ps=$4; shift 4
[ "$1" = -- ] && shift
w=
if [ "$bp" != - ]; then
  "$s" TCP4-LISTEN:"$bp",bind=127.0.0.1,fork,reuseaddr,backlog=1024 UNIX-CONNECT:"$bs" </dev/null >/dev/null 2>&1 &
  w=$(printf ':%04X' "$bp")
fi
if [ "$ps" != - ]; then
  "$s" TCP4-LISTEN:${EGRESS_PORT},bind=127.0.0.1,fork,reuseaddr,backlog=1024 UNIX-CONNECT:"$ps" </dev/null >/dev/null 2>&1 &
  w="$w $(printf ':%04X' ${EGRESS_PORT})"
fi
i=0
while [ $i -lt 500 ]; do
  up=1
  for p in $w; do grep -q "0100007F$p 00000000:0000 0A" /proc/net/tcp || up=0; done
  [ $up = 1 ] && break
  i=$((i+1)); sleep 0.01
done
exec "$@"
`

/** One run's network: what its sandbox and environment get, and its end. */
export interface RunNetwork {
  /** Variables of the run's environment (the proxy's, with `egress`). */
  env: Record<string, string>
  /** bubblewrap's options: a network namespace, and the run's sockets shown in it. */
  sandboxArgs: string[]
  /** The command the CLI is started through inside the sandbox (the relays). */
  inner: string[]
  /** Stop its sockets and remove them. Idempotent. */
  close: () => Promise<void>
}

export interface RunNetworkOptions {
  mode: 'egress' | 'none'
  socat: string
  /** The broker's port (a run without a broker, a cloud provider's, has only the proxy). */
  brokerPort: number | undefined
  egress: EgressProxy | undefined
}

const SEARCH = ['/usr/bin', '/bin', '/usr/local/bin']

/** socat, which relays a run's loopback ports to its sockets; null when it is not installed. */
export function findSocat (): string | null {
  for (const d of SEARCH) if (existsSync(join(d, 'socat'))) return join(d, 'socat')
  return null
}

/** Where runs' sockets live: a directory of the server's own that others may pass through but not list. */
function socketRoot (): string {
  for (const dir of [join('/run', 'claude-code-api-net'), join(tmpdir(), `claude-code-api-net-${process.getuid?.() ?? 0}`)]) {
    try {
      mkdirSync(dir, { mode: 0o711 })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') continue
    }
    const st = lstatSync(dir, { throwIfNoEntry: false })
    if (st?.isDirectory() === true && st.uid === (process.getuid?.() ?? 0) && (st.mode & 0o022) === 0) return dir
  }
  throw new Error('no directory for runs\' network sockets could be made (/run, the temp directory)')
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** The networks of sandboxed runs. */
export class RunNetworks {
  private readonly root = socketRoot()

  constructor (private readonly o: RunNetworkOptions) {
    // What a server killed outright left: its runs' directories (named after its pid) go.
    for (const name of readdirSync(this.root)) {
      const pid = Number(/^(\d+)-/.exec(name)?.[1])
      if (!Number.isInteger(pid) || !alive(pid)) rmSync(join(this.root, name), { recursive: true, force: true })
    }
  }

  get mode (): 'egress' | 'none' { return this.o.mode }

  /**
   * A network for the process `marker` of `owner` (its identity), its broker token served on the
   * run's own socket: that token works from nowhere else.
   */
  open (marker: string, owner: { uid: number, gid: number }, credential: RunCredential | undefined, run: string): RunNetwork {
    // Short: a UNIX socket's path has room for 107 bytes only.
    const dir = join(this.root, `${process.pid}-${createHash('sha256').update(marker).digest('hex').slice(0, 16)}`)
    mkdirSync(dir, { mode: 0o711 })
    const closers: Array<() => Promise<void>> = []
    let closed: Promise<void> | undefined
    const close = async (): Promise<void> => {
      closed ??= (async () => {
        for (const c of closers.splice(0)) await c().catch(() => {})
        rmSync(dir, { recursive: true, force: true })
      })()
      await closed
    }
    try {
      const brokerSocket = join(dir, 'broker.sock')
      if (credential !== undefined && this.o.brokerPort !== undefined) credential.listen(brokerSocket, owner)
      const env: Record<string, string> = {}
      let proxySocket = '-'
      const egress = this.o.egress
      if (this.o.mode === 'egress' && egress !== undefined) {
        proxySocket = join(dir, 'egress.sock')
        // Listening starts synchronously for a UNIX socket; the closer arrives a moment later.
        const stop = egress.listen(proxySocket, run, owner)
        // A listener that failed to start leaves the run without a way out, not the server down.
        stop.catch(() => {})
        closers.push(async () => await (await stop)())
        const url = `http://127.0.0.1:${EGRESS_PORT}`
        Object.assign(env, { HTTPS_PROXY: url, HTTP_PROXY: url, https_proxy: url, http_proxy: url, NO_PROXY: 'localhost,127.0.0.1,::1', no_proxy: 'localhost,127.0.0.1,::1' })
      }
      return {
        env,
        // No network: and no UNIX sockets of the host's either (/run holds a database's, D-Bus's).
        sandboxArgs: ['--unshare-net', '--tmpfs', '/run', ...(this.root.startsWith('/run/') ? [] : ['--tmpfs', this.root]), '--ro-bind', dir, dir],
        inner: (this.o.brokerPort !== undefined && credential !== undefined) || proxySocket !== '-'
          ? ['/bin/sh', '-c', RELAY, 'ccapi-net', this.o.socat, this.o.brokerPort !== undefined && credential !== undefined ? String(this.o.brokerPort) : '-', brokerSocket, proxySocket, '--']
          : [],
        close
      }
    } catch (err) {
      void close()
      throw err
    }
  }
}
