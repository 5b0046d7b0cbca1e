import { chmodSync, closeSync, constants, existsSync, fchmodSync, fchownSync, fstatSync, lstatSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync, type Stats } from 'node:fs'
import { dirname, join } from 'node:path'

/** What keeps runs apart from the server and from each other (see the README's security model). */
export type IsolationLevel = 'none' | 'uid' | 'sandbox'
/** What the operator asks for (`ISOLATION`). */
export type IsolationSetting = IsolationLevel | 'auto'

/** The unprivileged identity one API key's runs execute as. */
export interface AgentIdentity {
  /** The key it belongs to (`default` for the single key, or with auth off). */
  key: string
  uid: number
  gid: number
  /** Its own HOME, with its own Claude config directory: transcripts and settings of no other key. */
  home: string
  configDir: string
}

/** Whether this process may run children under other uids (root, or CAP_SETUID and CAP_SETGID). */
export function canSwitchUsers (): boolean {
  if (process.getuid?.() === 0) return true
  try {
    const status = readFileSync('/proc/self/status', 'utf8')
    const eff = BigInt('0x' + (/^CapEff:\s*([0-9a-f]+)/m.exec(status)?.[1] ?? '0'))
    // CAP_SETGID = 6, CAP_SETUID = 7.
    return (eff & (1n << 6n)) !== 0n && (eff & (1n << 7n)) !== 0n
  } catch {
    return false
  }
}

/**
 * The level in force: the one asked for when the machine allows it (else why not), or with
 * `auto` the highest it allows: `sandbox` needs agent identities and a working bubblewrap, `uid`
 * needs the privilege to switch users.
 */
export function resolveIsolation (setting: IsolationSetting, switchUsers: boolean, sandbox: { ok: true } | { ok: false, why: string }): { level: IsolationLevel } | { refused: string } {
  const noRoot = 'the server to run as root (or with CAP_SETUID and CAP_SETGID) so runs can drop to agent uids'
  switch (setting) {
    case 'none': return { level: 'none' }
    case 'uid':
      return switchUsers ? { level: 'uid' } : { refused: `ISOLATION=uid needs ${noRoot}; start it so, or set ISOLATION=auto` }
    case 'sandbox':
      if (!switchUsers) return { refused: `ISOLATION=sandbox needs ${noRoot}; start it so, or set ISOLATION=auto` }
      return sandbox.ok ? { level: 'sandbox' } : { refused: `ISOLATION=sandbox needs bubblewrap with unprivileged user and PID namespaces (${sandbox.why}); install bubblewrap, or set ISOLATION=uid` }
    case 'auto':
      return { level: !switchUsers ? 'none' : sandbox.ok ? 'sandbox' : 'uid' }
  }
}

/** A key name that is also a safe directory name (not `.` or `..`). */
const NAME_OK = /^(?!\.+$)[A-Za-z0-9_.-]{1,64}$/

/**
 * One unprivileged uid/gid per API key, from `base` up, remembered in `registryFile` so a key keeps
 * its uid (and its files) across restarts; each with a HOME and Claude config directory of its
 * own under `agentsDir`, owned by it and closed to everyone else.
 */
export class AgentIdentities {
  private readonly byKey = new Map<string, number>()

  /**
   * `shared`: instances of a cluster share `agentsDir` and must give a key the same uid: the
   * registry is then `agentsDir/.ids/`, where each uid and each key is claimed by creating a file
   * exclusively (`O_EXCL`), which holds on a shared file system as well.
   */
  constructor (private readonly agentsDir: string, private readonly registryFile: string, private readonly base: number, private readonly shared = false) {
    if (!shared && existsSync(registryFile)) {
      const saved = JSON.parse(readFileSync(registryFile, 'utf8')) as Record<string, number>
      for (const [k, uid] of Object.entries(saved)) if (Number.isInteger(uid)) this.byKey.set(k, uid)
    }
    mkdirSync(agentsDir, { recursive: true, mode: 0o711 })
    // Others may pass through (to reach their own home), never list it.
    chmodSync(agentsDir, 0o711)
  }

  /** The identity of a key's runs, created (uid, home, config directory) on first use. */
  identityFor (keyName: string | null): AgentIdentity {
    const key = keyName ?? 'default'
    if (!NAME_OK.test(key)) throw new Error(`key name ${key} cannot name an agent identity`)
    let uid = this.byKey.get(key)
    if (uid === undefined && this.shared) {
      uid = this.sharedUidOf(key)
      this.byKey.set(key, uid)
    }
    if (uid === undefined) {
      uid = this.base + this.byKey.size
      while ([...this.byKey.values()].includes(uid)) uid++
      this.byKey.set(key, uid)
      writeFileSync(this.registryFile, JSON.stringify(Object.fromEntries(this.byKey), null, 2) + '\n', { mode: 0o600 })
    }
    const home = join(this.agentsDir, key)
    const configDir = join(home, '.claude')
    for (const dir of [home, configDir]) ownedDirectory(dir, uid)
    return { key, uid, gid: uid, home, configDir }
  }

  /** The key's uid in the shared registry, claimed now if it has none. */
  private sharedUidOf (key: string): number {
    const dir = join(this.agentsDir, '.ids')
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    chmodSync(dir, 0o700)
    const keyFile = join(dir, `key-${key}`)
    const read = (): number | undefined => {
      try {
        const uid = Number(readFileSync(keyFile, 'utf8').trim())
        return Number.isInteger(uid) && uid > 0 ? uid : undefined
      } catch {
        return undefined
      }
    }
    const known = read()
    if (known !== undefined) return known
    for (let uid = this.base; uid < this.base + 1_000_000; uid++) {
      try {
        closeSync(openSync(join(dir, `uid-${uid}`), constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600))
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue
        throw err
      }
      try {
        writeFileSync(keyFile, `${uid}\n`, { flag: 'wx', mode: 0o600 })
        return uid
      } catch (err) {
        // Another instance named this key meanwhile: its uid it is; ours goes back.
        rmSync(join(dir, `uid-${uid}`), { force: true })
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
        for (let i = 0; i < 50; i++) {
          const theirs = read()
          if (theirs !== undefined) return theirs
        }
        throw new Error(`agent identity of key ${key}: its registry entry is unreadable`)
      }
    }
    throw new Error('no uid left for agent identities')
  }
}

/** Whether `uid` may write in `dir` (owner, group or other write permission; no ACLs). */
export function writableBy (dir: string, uid: number, gid: number): boolean {
  const st = statSync(dir)
  if (st.uid === uid) return (st.mode & 0o200) !== 0
  if (st.gid === gid) return (st.mode & 0o020) !== 0
  return (st.mode & 0o002) !== 0
}

/**
 * The first directory on the way to `path` that other users cannot pass through (no `x` for
 * others), or null when an agent identity can reach it.
 */
export function blockedOnTheWayTo (path: string): string | null {
  let dir = dirname(path)
  const chain: string[] = []
  for (;;) {
    chain.unshift(dir)
    const up = dirname(dir)
    if (up === dir) break
    dir = up
  }
  for (const d of chain) {
    let mode: number
    try {
      mode = statSync(d).mode
    } catch {
      // Not there yet: the server creates it (and what lies below) open to pass through.
      return null
    }
    if ((mode & 0o001) === 0) return d
  }
  return null
}

/**
 * Make `dir` a real directory owned by `uid`, mode 0700, without ever following a link: the agent
 * owns what is inside its home and could put a link to any path of the server's there. A link
 * (or anything that is not a directory) in its place is removed first. Owner and mode are set on
 * the open directory itself, so nothing can be swapped in between.
 */
/**
 * A directory at `dir` owned by `uid` (mode 0700), made if missing. Never follows a link: the
 * ownership is changed through a descriptor opened with `O_NOFOLLOW`, so a link an agent plants
 * there meanwhile is refused, not chowned.
 */
export function ownedDirectory (dir: string, uid: number): void {
  let st = lstatOrNull(dir)
  if (st !== null && !st.isDirectory()) {
    rmSync(dir, { force: true, recursive: false })
    st = null
  }
  if (st === null) mkdirSync(dir, { mode: 0o700 })
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
  try {
    const now = fstatSync(fd)
    if (now.uid !== uid || now.gid !== uid) fchownSync(fd, uid, uid)
    if ((now.mode & 0o777) !== 0o700) fchmodSync(fd, 0o700)
  } finally {
    closeSync(fd)
  }
}

function lstatOrNull (path: string): Stats | null {
  return lstatSync(path, { throwIfNoEntry: false }) ?? null
}
