import { spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { chmodSync, closeSync, constants, existsSync, fchmodSync, fchownSync, fstatSync, lchownSync, linkSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync, type Stats } from 'node:fs'
import { dirname, isAbsolute, join, relative } from 'node:path'
import { ConfigError, makeDirectory } from '../config.js'
import { AgentIdentityUnavailable } from '../domain/errors.js'
import { idsOfStatus } from './proc.js'

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
  /** Its own temp directory (`TMPDIR`), inside its home: nobody else's files in the way. */
  tmpDir: string
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

/** How many uids from the base are looked at for a new identity before giving up. */
const MAX_CANDIDATES = 100_000
/** The highest uid there is; 65535 is (uid_t)-1 of 16-bit interfaces, never an identity's. */
const MAX_UID = 4_294_967_294
const NEVER_UIDS = new Set([65_535])

export interface AgentIdentitiesOptions {
  /** Where the identities' homes are (`AGENTS_DIR`). */
  agentsDir: string
  /** This server's key → uid record (`DATA_DIR/agent-ids.json`; unused when `shared`). */
  registryFile: string
  /** The first uid to consider (`AGENT_UID_BASE`). */
  base: number
  /** The host-wide reservations of every server on the host (`AGENT_UID_REGISTRY_DIR`). */
  uidRegistryDir: string
  /**
   * Instances of a cluster share `agentsDir` and must give a key the same uid: the key → uid
   * record is then `agentsDir/.ids/`, where each uid and each key is claimed by creating a file
   * exclusively (`O_EXCL`), which holds on a shared file system as well.
   */
  shared?: boolean
  /** How many uids from `base` are looked at before giving up (default 100,000). */
  maxCandidates?: number
}

/**
 * One unprivileged uid/gid per API key, from `base` up, remembered in `registryFile` so a key keeps
 * its uid (and its files) across restarts; each with a HOME, a Claude config directory and a temp
 * directory of its own under `agentsDir`, owned by it and closed to everyone else.
 *
 * A new identity's uid (and gid, the same number) belongs to nothing else on the host: it is no
 * account or group NSS knows (`getent`), no running process has it as a uid or gid, and it is
 * reserved host-wide in `uidRegistryDir`, where a uid is claimed by creating `<uid>` exclusively,
 * holding the real path of the `agentsDir` it serves. Another server's uids (another `agentsDir`)
 * are skipped; the same `agentsDir` (a restart, a cluster's instances) keeps its own. A recorded
 * uid is checked again at its first use by this process: one that has since become an account or
 * group, or that another server reserved, is not used: that key's runs are refused
 * (`AgentIdentityUnavailable`) until the operator settles it, so no key ever runs as a real user.
 */
export class AgentIdentities {
  private readonly byKey = new Map<string, number>()
  /** Keys whose uid this process has checked (or just chose). */
  private readonly verified = new Set<string>()
  private readonly agentsDir: string
  private readonly registryFile: string
  private readonly base: number
  private readonly shared: boolean
  private readonly hostDir: string
  private readonly maxCandidates: number
  /** What this server's reservations hold: the real path of its `agentsDir`. */
  private readonly agentsReal: string

  constructor (o: AgentIdentitiesOptions) {
    this.agentsDir = o.agentsDir
    this.registryFile = o.registryFile
    this.base = o.base
    this.shared = o.shared ?? false
    this.hostDir = o.uidRegistryDir
    this.maxCandidates = o.maxCandidates ?? MAX_CANDIDATES
    if (!this.shared && existsSync(this.registryFile)) {
      const saved = JSON.parse(readFileSync(this.registryFile, 'utf8')) as Record<string, number>
      for (const [k, uid] of Object.entries(saved)) if (Number.isInteger(uid)) this.byKey.set(k, uid)
    }
    mkdirSync(this.agentsDir, { recursive: true, mode: 0o711 })
    // Others may pass through (to reach their own home), never list it.
    chmodSync(this.agentsDir, 0o711)
    this.agentsReal = realpathSync(this.agentsDir)
    uidRegistry(this.hostDir)
  }

  /** The identity of a key's runs, created (uid, home, config and temp directory) on first use. */
  identityFor (keyName: string | null): AgentIdentity {
    const key = keyName ?? 'default'
    if (!NAME_OK.test(key)) throw new Error(`key name ${key} cannot name an agent identity`)
    let uid = this.byKey.get(key)
    if (uid === undefined && this.shared) {
      uid = this.sharedUidOf(key)
      this.byKey.set(key, uid)
    }
    if (uid === undefined) {
      uid = this.newUid(key, () => true)
      this.verified.add(key)
      this.byKey.set(key, uid)
      writeFileSync(this.registryFile, JSON.stringify(Object.fromEntries(this.byKey), null, 2) + '\n', { mode: 0o600 })
    }
    this.verify(key, uid)
    const home = join(this.agentsDir, key)
    const configDir = join(home, '.claude')
    // Its own temp space: a /tmp/claude-<uid> another key planted cannot break its runs.
    const tmpDir = join(home, '.tmp')
    for (const dir of [home, configDir, tmpDir]) ownedDirectory(dir, uid)
    return { key, uid, gid: uid, home, configDir, tmpDir }
  }

  /**
   * The uids of the identities this server knows and may act on (end their stray processes,
   * say): a recorded uid that has since become an account, or another server's, is left out, so
   * nothing is ever done to a real user's processes.
   */
  knownUids (): number[] {
    const uids: number[] = []
    for (const [key, uid] of this.byKey) {
      try {
        this.verify(key, uid)
        uids.push(uid)
      } catch {
        // Refused to its key's runs too (identityFor says why).
      }
    }
    return uids
  }

  /**
   * A uid for a new identity: the first from `base` that no account or group has, no running
   * process uses, and that this server could reserve host-wide (and `claim` accepts, else it is
   * given back).
   */
  private newUid (key: string, claim: (uid: number) => boolean): number {
    const taken = new Set(this.byKey.values())
    // Listed once, so a range full of accounts costs no process per account; each candidate is
    // still asked for on its own (a directory service need not list its accounts).
    const listed = new Set([...nssIds('passwd'), ...nssIds('group')])
    const busy = processIds()
    const end = Math.min(this.base + this.maxCandidates, MAX_UID + 1)
    for (let uid = this.base; uid < end; uid++) {
      if (taken.has(uid) || NEVER_UIDS.has(uid) || listed.has(uid) || busy.has(uid)) continue
      if (nssName('passwd', uid) !== null || nssName('group', uid) !== null) continue
      // Already reserved, by another server or by an earlier life of this one (whose key may still
      // have files as that uid): not for a new key.
      if (this.reserve(uid) !== 'reserved') continue
      if (claim(uid)) return uid
      rmSync(join(this.hostDir, String(uid)), { force: true })
    }
    throw new AgentIdentityUnavailable(`no uid can be had for the agent identity of key ${key}: the ${end - this.base} uids from AGENT_UID_BASE=${this.base} are all accounts or groups (NSS), used by running processes, or reserved by other servers in ${this.hostDir}; set AGENT_UID_BASE to the start of a free range`)
  }

  /** Reserve `uid` host-wide for this server: made now, already this server's, or another's (its AGENTS_DIR). */
  private reserve (uid: number): 'reserved' | 'ours' | { theirs: string } {
    const file = join(this.hostDir, String(uid))
    // Written whole, then linked into place: linking fails if the name exists (an exclusive
    // create, like O_EXCL) and a reader never sees a half-written reservation.
    const draft = join(this.hostDir, `.draft-${process.pid}-${randomUUID()}`)
    writeFileSync(draft, this.agentsReal + '\n', { flag: 'wx', mode: 0o600 })
    try {
      linkSync(draft, file)
      return 'reserved'
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    } finally {
      rmSync(draft, { force: true })
    }
    const owner = readFileSync(file, 'utf8').trim()
    return owner === this.agentsReal ? 'ours' : { theirs: owner === '' ? 'unknown' : owner }
  }

  /**
   * Check a recorded uid once per process: it must not have become an account or a group, nor
   * be another server's. Refused (not moved: its files are the uid's) until the operator settles it.
   */
  private verify (key: string, uid: number): void {
    if (this.verified.has(key)) return
    const record = this.shared ? join(this.agentsDir, '.ids', `key-${key}`) : `the "${key}" entry of ${this.registryFile}`
    const fix = `remove ${record} to give the key a new uid (then chown -R its home and work area to it), or move that`
    const user = nssName('passwd', uid)
    if (user !== null) throw new AgentIdentityUnavailable(`the agent identity of key ${key} has uid ${uid}, which is now the account ${user} (NSS), so its runs are refused: ${fix} account to another uid`)
    const group = nssName('group', uid)
    if (group !== null) throw new AgentIdentityUnavailable(`the agent identity of key ${key} has gid ${uid}, which is now the group ${group} (NSS), so its runs are refused: ${fix} group to another gid`)
    const reserved = this.reserve(uid)
    if (typeof reserved === 'object') throw new AgentIdentityUnavailable(`the agent identity of key ${key} has uid ${uid}, which another server (AGENTS_DIR=${reserved.theirs}) reserved in ${this.hostDir}, so its runs are refused: ${fix} server's agents`)
    this.verified.add(key)
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
    // Free on this host and, across the cluster, claimed by no other key.
    const uid = this.newUid(key, uid => {
      try {
        closeSync(openSync(join(dir, `uid-${uid}`), constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600))
        return true
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
        throw err
      }
    })
    try {
      writeFileSync(keyFile, `${uid}\n`, { flag: 'wx', mode: 0o600 })
      this.verified.add(key)
      return uid
    } catch (err) {
      // Another instance named this key meanwhile: its uid it is (checked at use); ours goes back.
      rmSync(join(dir, `uid-${uid}`), { force: true })
      rmSync(join(this.hostDir, String(uid)), { force: true })
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      for (let i = 0; i < 50; i++) {
        const theirs = read()
        if (theirs !== undefined) return theirs
      }
      throw new Error(`agent identity of key ${key}: its registry entry is unreadable`)
    }
  }
}

/**
 * Make the host's uid registry: a directory of the server's user, closed to everyone else (an
 * agent that could write there could reserve, or free, uids).
 */
function uidRegistry (dir: string): void {
  try {
    makeDirectory(dir, 0o700)
  } catch (err) {
    throw new ConfigError(`AGENT_UID_REGISTRY_DIR=${dir} cannot be created (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): create it (mode 0700, owned by the server's user), or set AGENT_UID_REGISTRY_DIR to a directory of the server's`)
  }
  const st = lstatSync(dir)
  const me = process.geteuid?.() ?? 0
  if (!st.isDirectory()) throw new ConfigError(`AGENT_UID_REGISTRY_DIR=${dir} is not a directory: remove it, or set AGENT_UID_REGISTRY_DIR to another path`)
  if (st.uid !== me) throw new ConfigError(`AGENT_UID_REGISTRY_DIR=${dir} belongs to uid ${st.uid}, not to the server's user (${me}): chown ${me} ${dir}, or set AGENT_UID_REGISTRY_DIR to a directory of the server's`)
  if ((st.mode & 0o077) !== 0) chmodSync(dir, st.mode & 0o700)
}

/**
 * The name NSS knows `id` by in `db` (`passwd`: a uid, `group`: a gid), or null when it knows
 * none (`getent` exits 2). Where `getent` is missing, the files (/etc/passwd, /etc/group) say.
 */
export function nssName (db: 'passwd' | 'group', id: number): string | null {
  const r = spawnSync('getent', [db, String(id)], { encoding: 'utf8', timeout: 10_000 })
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return fileEntries(db).get(id) ?? null
  if (r.status === 2) return null
  if (r.status === 0) return r.stdout.split(':')[0] ?? String(id)
  throw new AgentIdentityUnavailable(`cannot tell whether ${db === 'passwd' ? 'uid' : 'gid'} ${id} is taken: getent ${db} ${id} failed (${r.error?.message ?? `exit ${String(r.status)}`}), so no agent identity is made; fix the host's name service`)
}

/** The ids NSS lists in `db` (those it can list; `nssName` asks for the others). */
function nssIds (db: 'passwd' | 'group'): Set<number> {
  const r = spawnSync('getent', [db], { encoding: 'utf8', timeout: 10_000, maxBuffer: 256 * 1024 * 1024 })
  if (r.status !== 0) return new Set(fileEntries(db).keys())
  return new Set(parseEntries(r.stdout).keys())
}

function fileEntries (db: 'passwd' | 'group'): Map<number, string> {
  try {
    return parseEntries(readFileSync(`/etc/${db}`, 'utf8'))
  } catch {
    return new Map()
  }
}

/** `name:x:id:…` lines: id → name. */
function parseEntries (text: string): Map<number, string> {
  const ids = new Map<number, string>()
  for (const line of text.split('\n')) {
    const [name, , id] = line.split(':')
    if (name !== undefined && id !== undefined && /^\d+$/.test(id)) ids.set(Number(id), name)
  }
  return ids
}

/** Every uid and gid (real, effective, saved, file system) of a running process. */
export function processIds (): Set<number> {
  const ids = new Set<number>()
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    let status: string
    try {
      status = readFileSync(`/proc/${name}/status`, 'utf8')
    } catch {
      continue // ended meanwhile
    }
    const { uids, gids } = idsOfStatus(status)
    for (const id of [...uids, ...gids]) ids.add(id)
  }
  return ids
}

/** Whether `uid` may write in `dir` (owner, group or other write permission; no ACLs). */
export function writableBy (dir: string, uid: number, gid: number): boolean {
  return permits(statSync(dir), uid, gid, 0o2)
}

/** Whether `uid`/`gid` has `bit` (2: write, 1: search) by `st`'s owner, group or other bits (no ACLs). */
function permits (st: Stats, uid: number, gid: number, bit: number): boolean {
  if (st.uid === uid) return (st.mode & (bit << 6)) !== 0
  if (st.gid === gid) return (st.mode & (bit << 3)) !== 0
  return (st.mode & bit) !== 0
}

/** At most this many entries in a directory handed over to an identity. */
const HAND_OVER_MAX_ENTRIES = 10_000

/**
 * Hand `dir`, a directory of the server's own user that lies strictly inside `workRoot`, to an
 * identity: it and everything in it become `uid`'s (links themselves, never what they point
 * at), and the directory is closed to others. Only when nobody else can have a hand in it: every
 * directory from `workRoot` down is the server's and writable by nobody else, and within there is
 * nothing of another user (an entry of another identity, of anyone), no hard-linked file, no
 * device, and at most 10,000 entries. Returns why not, or null once done. Owners change deepest
 * first, so nothing is touched inside a directory once the identity holds it.
 */
export function handOverDirectory (dir: string, workRoot: string, uid: number, gid: number, maxEntries = HAND_OVER_MAX_ENTRIES): string | null {
  const me = process.geteuid?.() ?? 0
  const myGroup = process.getegid?.() ?? 0
  const rel = relative(workRoot, dir)
  if (rel === '' || rel === '..' || rel.startsWith('../') || isAbsolute(rel)) return `it is not inside DEFAULT_WORKING_DIR (${workRoot})`
  const closed = (path: string, st: Stats): string | null => {
    if (st.uid !== me) return `${path} belongs to uid ${st.uid}`
    if ((st.mode & 0o002) !== 0 || ((st.mode & 0o020) !== 0 && st.gid !== myGroup)) return `${path} is writable by other users`
    return null
  }
  for (let d = dirname(dir); ; d = dirname(d)) {
    const why = closed(d, lstatSync(d))
    if (why !== null) return why
    if (d === workRoot) break
  }
  // Post-order: each directory after what it holds.
  const order: string[] = []
  const walk = (path: string): string | null => {
    const st = lstatSync(path)
    if (st.isSymbolicLink() || st.isFile()) {
      if (st.uid === uid) return null
      if (st.uid !== me) return `${path} belongs to uid ${st.uid}`
      if (st.isFile() && st.nlink > 1) return `${path} is a hard link`
      order.push(path)
      return null
    }
    if (st.isDirectory()) {
      // Already the identity's: left as it is (what is inside is its to change meanwhile).
      if (st.uid === uid && path !== dir) return null
      const why = closed(path, st)
      if (why !== null) return why
      for (const name of readdirSync(path)) {
        if (order.length >= maxEntries) return `it holds more than ${maxEntries} entries`
        const why = walk(join(path, name))
        if (why !== null) return why
      }
      order.push(path)
      return null
    }
    return `${path} is not a regular file, directory or link`
  }
  const why = walk(dir)
  if (why !== null) return why
  for (const path of order.slice(0, -1)) lchownSync(path, uid, gid)
  // The directory itself: through a descriptor that cannot be a link.
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW)
  try {
    const st = fstatSync(fd)
    fchownSync(fd, uid, gid)
    fchmodSync(fd, st.mode & 0o7700)
  } finally {
    closeSync(fd)
  }
  return null
}

/**
 * The first directory on the way to `path` that `uid`/`gid` cannot pass through, or null when it
 * can reach it. Without them: any agent identity (a user who owns none of them, by the bits for
 * others). A directory not there yet ends the walk: the server creates it, open to pass through.
 */
export function blockedFor (path: string, uid = -1, gid = -1): string | null {
  const chain: string[] = []
  for (let d = dirname(path); ; d = dirname(d)) {
    chain.unshift(d)
    if (dirname(d) === d) break
  }
  for (const d of chain) {
    let st: Stats
    try {
      st = statSync(d)
    } catch {
      return null
    }
    if (!permits(st, uid, gid, 0o1)) return d
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
