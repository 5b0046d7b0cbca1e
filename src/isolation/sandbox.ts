import { execa } from 'execa'
import { existsSync, lstatSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { tmpdir } from 'node:os'
import { blockedFor } from './identities.js'

/** What a run's sandbox must show, hide and let it write. */
export interface SandboxPaths {
  /** The identity the sandbox runs as: what it can reach decides how its paths are shown. */
  uid: number
  gid: number
  /** The run's working directory: the one place of the shared tree it may write. */
  cwd: string
  /** Where the CLI starts (a spare parks in its home, away from the directory it serves); `cwd` by default. */
  chdir?: string
  /** Its identity's HOME (its own Claude config inside): writable. */
  home: string
  /** Where every identity's HOME lives: hidden but for its own. */
  agentsDir: string
  /** The server's paths: hidden (an empty tmpfs or /dev/null in their place). */
  hiddenDirs: string[]
  hiddenFiles: string[]
  /** Directories the run must see read-only wherever they are (the CLI's). */
  readOnly?: string[]
  /** Bytes its private /tmp may hold (a size-limited tmpfs); unlimited when absent. */
  tmpSize?: number
  /** A network of its own: bubblewrap's options for it, and the command the CLI starts through inside. */
  network?: { args: string[], inner: string[] }
}

/** The programs a sandbox is built with, found once at start. */
export interface SandboxTools {
  bwrap: string
  /**
   * util-linux's `unshare` and `setpriv`: needed only where a path the run must see lies below a
   * directory its identity cannot enter (a checkout in root's private HOME, say).
   */
  unshare: string | null
  setpriv: string | null
  /** An empty directory where paths are staged while such a mount namespace is prepared (null: none could be had). */
  stage: string | null
}

/** How one sandboxed CLI is launched. */
export interface SandboxLaunch {
  command: string
  args: string[]
  /**
   * True: the command starts as the server (root), prepares a mount namespace and drops to the
   * identity itself (`setpriv`); false: it is spawned as the identity.
   */
  privileged: boolean
  /**
   * Privileged only: the run's environment does not reach the root part of the launch; bubblewrap
   * reads it (`--clearenv --setenv …`, NUL-separated) from this descriptor, never from argv.
   */
  envFd?: number
  /** The command the CLI is started through inside the sandbox (its network's relays), if any. */
  inner?: string[]
}

const SEARCH = ['/usr/bin', '/bin', '/usr/local/bin', '/usr/sbin', '/sbin']

function findTool (name: string): string | null {
  for (const dir of SEARCH) if (existsSync(join(dir, name))) return join(dir, name)
  return null
}

/** The bubblewrap executable, if this machine has one. */
export function findBwrap (): string | null {
  return findTool('bwrap')
}

/**
 * The sandbox's programs, or null without bubblewrap. The staging directory is made here
 * (`/run/claude-code-api`, else below the temp directory): it is only ever a mount point inside
 * a run's own mount namespace, nothing is written to it on the host.
 */
export function sandboxTools (): SandboxTools | null {
  const bwrap = findBwrap()
  if (bwrap === null) return null
  const stage = [join('/run', 'claude-code-api-stage'), join(tmpdir(), `claude-code-api-stage-${process.getuid?.() ?? 0}`)].find(ownStagingDir) ?? null
  return { bwrap, unshare: findTool('unshare'), setpriv: findTool('setpriv'), stage }
}

/**
 * Whether `dir` is (or now is) a real directory of the server's own, closed to others: never one
 * another user made first, nor a link (the launch mounts on it as root).
 */
function ownStagingDir (dir: string): boolean {
  try {
    mkdirSync(dir, { mode: 0o700 })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') return false
  }
  const st = lstatSync(dir, { throwIfNoEntry: false })
  return st !== undefined && st.isDirectory() && st.uid === (process.getuid?.() ?? 0) && (st.mode & 0o077) === 0
}

/**
 * Whether nothing `uid` does can change where `dir` leads: it and every directory above it belong
 * to another user and are writable by neither the identity's group nor others (or are sticky).
 */
function settledFor (dir: string, uid: number, gid: number): boolean {
  for (let d = dir; ; d = dirname(d)) {
    const st = lstatSync(d, { throwIfNoEntry: false })
    if (st === undefined || !st.isDirectory() || st.uid === uid) return false
    const sticky = (st.mode & 0o1000) !== 0
    if (!sticky && ((st.mode & 0o002) !== 0 || (st.gid === gid && (st.mode & 0o020) !== 0))) return false
    if (dirname(d) === d) return true
  }
}

const isBelow = (root: string, p: string): boolean => p === root || p.startsWith(root.endsWith('/') ? root : root + '/')

/**
 * Run as root in a mount namespace of the run's own (`unshare --mount`), before dropping to the
 * identity: each path the run must see but cannot reach is bound into a staging tmpfs, each
 * directory in the way is covered by an empty tmpfs (which hides whatever else it holds: the
 * operator's HOME, `.env`, ...), and the staged paths are moved to their own places inside it.
 * Arguments: UID STAGE SETPRIV, then `b DEV:INO PATH` and `h DIR` entries, then `--` and the
 * command. Each staged path must still be the directory the server checked (device and inode): an
 * agent that swaps a directory of its own for a link meanwhile fails its run, and reaches nothing.
 * Every directory from / to each cover is another user's and closed to the identity
 * (`settledFor`), so nothing the agent does changes where the covers and moves land.
 */
const PREPARE = `set -e
umask 022
u=$1; st=$2; sp=$3; shift 3
PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t tmpfs -o mode=0700,size=64k ccapi-stage "$st"
i=0; op=; id=
for a in "$@"; do
  if [ -z "$op" ]; then if [ "$a" = -- ]; then break; fi; op=$a; continue; fi
  if [ "$op" = b ]; then id=$a; op=B; continue; fi
  if [ "$op" = B ]; then
    i=$((i+1)); mkdir "$st/$i"; mount --no-canonicalize --bind "$a" "$st/$i"
    if [ "$(stat -c %d:%i "$st/$i")" != "$id" ]; then echo "ccapi-sandbox: $a changed while the run started" >&2; exit 126; fi
  fi
  op=
done
op=
for a in "$@"; do
  if [ -z "$op" ]; then if [ "$a" = -- ]; then break; fi; op=$a; continue; fi
  if [ "$op" = b ]; then op=B; continue; fi
  if [ "$op" = h ]; then mount --no-canonicalize -t tmpfs -o mode=0755,size=64k ccapi-hidden "$a"; fi
  op=
done
i=0; op=
for a in "$@"; do
  if [ -z "$op" ]; then if [ "$a" = -- ]; then break; fi; op=$a; continue; fi
  if [ "$op" = b ]; then op=B; continue; fi
  if [ "$op" = B ]; then i=$((i+1)); mkdir -p "$a"; mount --no-canonicalize --move "$st/$i" "$a"; fi
  op=
done
umount "$st"
while [ "$1" != -- ]; do shift; done
shift
exec "$sp" --reuid="$u" --regid="$u" --clear-groups -- "$@"
`

/**
 * How to launch one run's CLI in bubblewrap: its own PID namespace (it sees only its own
 * processes, and when the run ends nothing of it survives: the namespace dies with its first
 * process), the whole file system read-only, the server's paths hidden, other identities' homes
 * hidden, and only the run's directory, its own HOME and a private /tmp writable.
 *
 * Paths the identity cannot reach (below a directory closed to it, as root's HOME is) are never
 * named to bubblewrap, which runs as the identity and could not even look at them: the server's
 * own paths there are hidden already, and those the run needs (its directory, its HOME, the CLI)
 * are shown through a mount namespace prepared as root (`PREPARE`).
 */
export function sandboxLaunch (p: SandboxPaths, tools: SandboxTools): SandboxLaunch {
  const blocked = (path: string): string | null => blockedFor(path, p.uid, p.gid)
  const args = [
    '--unshare-pid', '--unshare-ipc', '--unshare-uts',
    '--die-with-parent',
    '--ro-bind', '/', '/',
    '--proc', '/proc',
    '--dev', '/dev',
    ...(p.tmpSize !== undefined ? ['--size', String(p.tmpSize)] : []), '--tmpfs', '/tmp',
    ...(p.tmpSize !== undefined ? ['--size', String(p.tmpSize)] : []), '--tmpfs', '/dev/shm',
    ...(p.network?.args ?? [])
  ]
  const readOnly = (p.readOnly ?? []).filter(d => existsSync(d))
  // After the private /tmp: a CLI installed below /tmp must stay visible.
  for (const d of readOnly) args.push('--ro-bind', d, d)
  for (const d of p.hiddenDirs) if (existsSync(d) && blocked(d) === null) args.push('--tmpfs', d)
  for (const f of p.hiddenFiles) if (existsSync(f) && blocked(f) === null) args.push('--ro-bind', '/dev/null', f)
  args.push('--tmpfs', p.agentsDir, '--bind', p.home, p.home, '--bind', p.cwd, p.cwd, '--chdir', p.chdir ?? p.cwd)

  // What the run needs but cannot reach, and the directories in its way.
  const needed = [...new Set([p.home, p.cwd, ...readOnly])].sort((a, b) => a.length - b.length)
  const binds: string[] = []
  const covers = new Set<string>()
  for (const path of needed) {
    const b = blocked(path)
    if (b === null || binds.some(r => isBelow(r, path))) continue
    binds.push(path)
    covers.add(b)
  }
  const inner = p.network !== undefined && p.network.inner.length > 0 ? { inner: p.network.inner } : {}
  if (binds.length === 0) return { command: tools.bwrap, args, privileged: false, ...inner }
  if (tools.unshare === null || tools.setpriv === null || tools.stage === null) {
    throw new Error(`${binds[0] ?? ''} lies below ${[...covers][0] ?? ''}, which agent identities cannot enter, and util-linux's unshare and setpriv (or a staging directory of the server's own), which would show it to the sandbox, are missing`)
  }
  for (const c of covers) {
    // A directory the agent owns (or could replace) is no place for root to mount on: its own run fails.
    if (!settledFor(c, p.uid, p.gid)) throw new Error(`${c} is in the way of the run's paths, and the agent identity could change it; the run does not start`)
  }
  const ops: string[] = []
  for (const b of binds) {
    // As checked now, never through a link: the staged mount must be this very directory.
    const st = lstatSync(b)
    if (!st.isDirectory()) throw new Error(`${b} is no longer a directory; the run does not start`)
    ops.push('b', `${st.dev}:${st.ino}`, b)
  }
  for (const c of covers) ops.push('h', c)
  const envFd = 3
  return {
    command: tools.unshare,
    args: ['--mount', '--propagation', 'private', '--', '/bin/sh', '-c', PREPARE, 'ccapi-sandbox', String(p.uid), tools.stage, tools.setpriv, ...ops, '--', tools.bwrap, '--args', String(envFd), ...args],
    privileged: true,
    envFd,
    ...inner
  }
}

/**
 * Whether bubblewrap works here for an unprivileged identity (unprivileged user namespaces, PID
 * namespaces): tried once at start as `uid`.
 */
export async function sandboxWorks (bwrap: string, uid: number): Promise<{ ok: true } | { ok: false, why: string }> {
  try {
    await execa(bwrap, ['--unshare-pid', '--die-with-parent', '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', 'true'], { uid, gid: uid, timeout: 10_000, env: { PATH: '/usr/bin:/bin' }, extendEnv: false, cwd: '/' })
    return { ok: true }
  } catch (err) {
    return { ok: false, why: (err as Error).message.split('\n').find(l => l.includes('bwrap:')) ?? (err as Error).message.split('\n')[0] ?? 'bwrap failed' }
  }
}
