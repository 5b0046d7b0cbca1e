import { execFile, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'

// What a run changed in its working directory, whether or not it is a git repository: the
// directory is recorded before the run (once its CLI could touch it) and after, as git trees in a
// repository of the server's own (never the directory's own `.git`). Every file goes in, content
// and mode, so a change made by the agent's edit tools, by a shell command or by anything the run
// started shows the same. Git's index keeps each file's stat data: a directory recorded before is
// read again only where files changed.
//
// Git reads the directory as the run's own user: a run with an agent identity is recorded by a
// git running as that identity, in a repository in its home, so whatever the run does to its
// directory meanwhile (a link swapped in for it, a `.git` file pointing elsewhere) can only lead
// git where the run itself could read. Without identities the runs are the server's user anyway.
// The record of which trees belong to which run stays the server's (`DATA_DIR/snapshots/runs`).
//
// What it cannot see: what `.gitignore` files leave out (as in a repository: dependencies and
// build outputs usually), the inside of nested repositories (a directory with its own `.git`:
// one entry), files the run's user cannot read, and empty directories.

/** One file a run changed. */
export interface FileChange {
  path: string
  change: 'added' | 'modified' | 'deleted'
  size_before: number | null
  size_after: number | null
}

/** The counts of a run's changes (its result carries them). */
export interface ChangeCounts { files: number, added: number, modified: number, deleted: number }

/** A tree entry of a recorded directory: its git mode and object. */
export interface TreeEntry { mode: string, sha: string }

/** Whose git records a run's directory (a run's agent identity), and where its repositories are. */
export interface SnapshotOwner { uid: number, gid: number, home: string }

/** What is kept of a run: its directory, its trees, and whose repository holds them. */
export interface RunRecord { cwd: string, before: string, after?: string, owner?: SnapshotOwner, /** Why the recording after the run failed. */ failed?: string }

/** Git, told to read nothing of the user's or the directory's configuration, and to run no hook. */
const GIT_CONFIG: Array<[string, string]> = [
  ['core.autocrlf', 'false'], ['core.safecrlf', 'false'], ['core.fsmonitor', 'false'],
  ['core.hooksPath', '/dev/null'], ['gc.auto', '0'], ['core.quotePath', 'false'],
  ['safe.directory', '*'], ['core.untrackedCache', 'false'], ['core.symlinks', 'true'],
  ['diff.external', ''], ['advice.addEmbeddedRepo', 'false'], ['core.bigFileThreshold', '16m']
]
/** The same, as the environment gives it to every git a script starts. */
const GIT_CONFIG_ENV: NodeJS.ProcessEnv = Object.fromEntries([
  ['GIT_CONFIG_COUNT', String(GIT_CONFIG.length)],
  ...GIT_CONFIG.flatMap(([k, v], i) => [[`GIT_CONFIG_KEY_${i}`, k], [`GIT_CONFIG_VALUE_${i}`, v]])
])

/**
 * A recording in one process, in the directory (the work tree is the current directory: no path
 * names it): the repository made on first use (private to its user); a lock left by a git killed
 * at its time limit removed (one recording at a time per directory); every file added to the index
 * (unreadable ones left out: exit 1); its tree written and printed; with a tree as `$1`, the
 * changes from it follow (`diff-tree -z`).
 */
const RECORD_SCRIPT = [
  'umask 077',
  '[ -f "$GIT_DIR/HEAD" ] || { mkdir -p "$GIT_DIR" && git init -q --bare "$GIT_DIR" && git config core.bare false; } || exit 1',
  'rm -f "$GIT_DIR/index.lock"',
  'git add -A --ignore-errors -- . >/dev/null 2>&1; s=$?; [ "$s" -le 1 ] || exit "$s"',
  't=$(git write-tree) || exit 1',
  'printf "%s\\0" "$t"',
  '[ -z "$1" ] || exec git diff-tree -r -z --no-renames --raw "$1" "$t"'
].join('\n')

/** The longest a recording, or a diff, may take (a huge directory): the run then has no changes recorded. */
const GIT_TIMEOUT_MS = 60_000
/**
 * The longest the recording before a run may hold up its prompt: a directory that takes longer
 * (hundreds of thousands of files the first time) is not recorded, and the run goes on.
 */
export const BEFORE_TIMEOUT_MS = 15_000

/** Text of a path git printed, or undefined when it is not UTF-8 (such a name is not shown wrongly). */
const utf8 = new TextDecoder('utf-8', { fatal: true })
function textOf (b: Buffer): string | undefined {
  try {
    return utf8.decode(b)
  } catch {
    return undefined
  }
}

export class Snapshots {
  private readonly locks = new Map<string, Promise<unknown>>()

  constructor (private readonly root: string, private readonly git = 'git') {}

  /** Whether git is there to record with. */
  static async available (git = 'git'): Promise<boolean> {
    return await new Promise(resolve => execFile(git, ['--version'], err => { resolve(err === null) }))
  }

  /** The repository of a directory: the server's, or its run's identity's (in its home). */
  private repoOf (cwd: string, owner: SnapshotOwner | undefined): string {
    const name = createHash('sha256').update(cwd).digest('hex').slice(0, 32)
    return owner === undefined ? join(this.root, name) : join(owner.home, '.snapshots', name)
  }

  private recordPath (runId: string): string {
    return join(this.root, 'runs', `${runId}.json`)
  }

  private env (repo: string): NodeJS.ProcessEnv {
    return {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      GIT_DIR: repo,
      GIT_INDEX_FILE: join(repo, 'index'),
      GIT_CONFIG_NOSYSTEM: '1',
      GIT_CONFIG_GLOBAL: '/dev/null',
      HOME: repo,
      GIT_TERMINAL_PROMPT: '0',
      LC_ALL: 'C',
      ...GIT_CONFIG_ENV
    }
  }

  /**
   * A command as the repository's user, under timeout(1) (its own process group: one cut at its
   * limit ends with every git it started). Output as bytes: names need not be UTF-8.
   */
  private async exec (command: string[], r: { repo: string, owner: SnapshotOwner | undefined, cwd?: string }, opts: { input?: string, timeoutMs?: number } = {}): Promise<Buffer> {
    const secs = String(Math.max(1, Math.ceil((opts.timeoutMs ?? GIT_TIMEOUT_MS) / 1000)))
    return await new Promise((resolve, reject) => {
      const child = execFile('timeout', ['-s', 'KILL', secs, ...command], {
        env: this.env(r.repo),
        cwd: r.cwd ?? '/',
        maxBuffer: 256 * 1024 * 1024,
        encoding: 'buffer',
        ...(r.owner !== undefined ? { uid: r.owner.uid, gid: r.owner.gid } : {})
      }, (err, stdout, stderr) => {
        const code = (err as { code?: unknown } | null)?.code
        if (code === 137 || code === 124) reject(new Error(`${command.join(' ').slice(0, 60)}: took longer than ${secs} s`))
        else if (err !== null) reject(new Error(`${command[0] === '/bin/sh' ? 'recording' : command.slice(0, 2).join(' ')}: ${stderr.toString().trim() || err.message}`))
        else resolve(stdout)
      })
      if (opts.input !== undefined) child.stdin?.end(opts.input)
    })
  }

  /** One recording at a time per repository (they share its index of stat data). */
  private async serial<T> (repo: string, fn: () => Promise<T>): Promise<T> {
    const before = this.locks.get(repo) ?? Promise.resolve()
    const mine = before.catch(() => {}).then(fn)
    this.locks.set(repo, mine)
    try {
      return await mine
    } finally {
      if (this.locks.get(repo) === mine) this.locks.delete(repo)
    }
  }

  /**
   * The directory as it stands, as a tree of its repository; with `from`, also the raw changes
   * from that tree (`diff-tree -z` output).
   */
  async record (cwd: string, owner: SnapshotOwner | undefined, from?: string, timeoutMs = GIT_TIMEOUT_MS): Promise<{ tree: string, raw: Buffer }> {
    const repo = this.repoOf(cwd, owner)
    if (owner === undefined) await mkdir(this.root, { recursive: true, mode: 0o700 })
    return await this.serial(repo, async () => {
      const out = await this.exec(['/bin/sh', '-c', RECORD_SCRIPT, 'record', from ?? ''], { repo, owner, cwd }, { timeoutMs })
      const cut = out.indexOf(0)
      return { tree: out.subarray(0, cut).toString(), raw: out.subarray(cut + 1) }
    })
  }

  /** Record a run's directory before it runs. */
  async before (runId: string, cwd: string, owner?: SnapshotOwner): Promise<void> {
    const { tree } = await this.record(cwd, owner, undefined, BEFORE_TIMEOUT_MS)
    await mkdir(join(this.root, 'runs'), { recursive: true, mode: 0o700 })
    await this.write(runId, { cwd, before: tree, ...(owner !== undefined ? { owner } : {}) })
  }

  /** Record a run's directory after it ran; its changes counted (undefined: nothing recorded before). */
  async after (runId: string): Promise<ChangeCounts | undefined> {
    const r = await this.read(runId)
    if (r === undefined) return undefined
    let recorded: { tree: string, raw: Buffer }
    try {
      recorded = await this.record(r.cwd, r.owner, r.before)
    } catch (err) {
      await this.write(runId, { ...r, failed: (err as Error).message })
      throw err
    }
    const { tree, raw } = recorded
    r.after = tree
    await this.write(runId, r)
    const changes = parseRaw(raw)
    return {
      files: changes.length,
      added: changes.filter(c => c.status === 'A').length,
      modified: changes.filter(c => c.status !== 'A' && c.status !== 'D').length,
      deleted: changes.filter(c => c.status === 'D').length
    }
  }

  private async write (runId: string, r: RunRecord): Promise<void> {
    const path = this.recordPath(runId)
    await writeFile(path + '.tmp', JSON.stringify(r), { mode: 0o600 })
    await rename(path + '.tmp', path)
  }

  /** What was recorded of a run (undefined: nothing; `after` missing: it has not ended here). */
  async read (runId: string): Promise<RunRecord | undefined> {
    try {
      return JSON.parse(await readFile(this.recordPath(runId), 'utf8')) as RunRecord
    } catch {
      return undefined
    }
  }

  /**
   * The files that differ between two trees of a run's directory, with their sizes. A name that is
   * not UTF-8 is listed with U+FFFD in it and `unreadable: true`.
   */
  async between (r: RunRecord, from: string, to: string): Promise<Array<FileChange & { unreadable?: true }>> {
    const repo = this.repoOf(r.cwd, r.owner)
    const where = { repo, owner: r.owner }
    const entries = parseRaw(await this.exec([this.git, 'diff-tree', '-r', '-z', '--no-renames', '--raw', from, to], where))
    const shas = [...new Set(entries.flatMap(e => [e.before, e.after]).filter(s => !/^0+$/.test(s)))]
    const sizes = new Map<string, number>()
    if (shas.length > 0) {
      const out = (await this.exec([this.git, 'cat-file', '--batch-check=%(objectname) %(objectsize)'], where, { input: shas.join('\n') + '\n' })).toString()
      for (const line of out.split('\n')) {
        const [sha, size] = line.split(' ')
        if (sha !== undefined && size !== undefined && /^\d+$/.test(size)) sizes.set(sha, Number(size))
      }
    }
    return entries.map(e => {
      const path = textOf(e.path)
      return {
        path: path ?? e.path.toString(),
        change: e.status === 'A' ? 'added' : e.status === 'D' ? 'deleted' : 'modified',
        size_before: e.status === 'A' ? null : sizes.get(e.before) ?? null,
        size_after: e.status === 'D' ? null : sizes.get(e.after) ?? null,
        ...(path === undefined ? { unreadable: true as const } : {})
      }
    })
  }

  /** A unified diff between two trees (text files; binary ones named), at most `maxBytes`. */
  async diff (r: RunRecord, from: string, to: string, maxBytes: number): Promise<{ text: string, truncated: boolean }> {
    const repo = this.repoOf(r.cwd, r.owner)
    return await new Promise((resolve, reject) => {
      const child = spawn('timeout', ['-s', 'KILL', String(GIT_TIMEOUT_MS / 1000), this.git, 'diff', '--no-color', '--no-ext-diff', '--no-textconv', '--no-renames', from, to], {
        env: this.env(repo),
        cwd: '/',
        stdio: ['ignore', 'pipe', 'pipe'],
        ...(r.owner !== undefined ? { uid: r.owner.uid, gid: r.owner.gid } : {})
      })
      const chunks: Buffer[] = []
      let size = 0
      let truncated = false
      let stderr = ''
      child.stdout.on('data', (c: Buffer) => {
        if (truncated) return
        if (size + c.length > maxBytes) {
          chunks.push(c.subarray(0, maxBytes - size))
          size = maxBytes
          truncated = true
          child.kill('SIGKILL')
          return
        }
        chunks.push(c)
        size += c.length
      })
      child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
      child.on('error', reject)
      child.on('close', code => {
        if (!truncated && code !== 0) reject(new Error(`git diff: ${stderr.trim() || `exit ${String(code)}`}`))
        else resolve({ text: Buffer.concat(chunks).toString('utf8'), truncated })
      })
    })
  }

  /** The entries of a tree at the paths given (absent ones left out). */
  async entries (r: RunRecord, tree: string, paths: string[]): Promise<Map<string, TreeEntry>> {
    const out = new Map<string, TreeEntry>()
    if (paths.length === 0) return out
    const raw = await this.exec([this.git, 'ls-tree', '-r', '-z', '--full-tree', tree], { repo: this.repoOf(r.cwd, r.owner), owner: r.owner })
    const wanted = new Set(paths)
    for (const line of raw.toString('utf8').split('\0')) {
      const m = /^(\d+) \w+ ([0-9a-f]+)\t([\s\S]*)$/.exec(line)
      if (m !== null && wanted.has(m[3] ?? '')) out.set(m[3] ?? '', { mode: m[1] ?? '', sha: m[2] ?? '' })
    }
    return out
  }

  /**
   * An object's content, streamed (a blob of a recorded tree): git starts when it is first read,
   * and a git that fails makes the stream fail (a file is never written back half).
   */
  blob (r: RunRecord, sha: string): Readable {
    const repo = this.repoOf(r.cwd, r.owner)
    const env = this.env(repo)
    const git = this.git
    const owner = r.owner
    return Readable.from((async function * () {
      const child = spawn(git, ['cat-file', 'blob', sha], { env, cwd: '/', stdio: ['ignore', 'pipe', 'ignore'], ...(owner !== undefined ? { uid: owner.uid, gid: owner.gid } : {}) })
      const exited = new Promise<number | null>((resolve, reject) => { child.on('error', reject).on('close', resolve) })
      for await (const chunk of child.stdout) yield chunk as Buffer
      const code = await exited
      if (code !== 0) throw new Error(`git cat-file ${sha}: exit ${String(code)}`)
    })(), { objectMode: false })
  }

  /** A link's target, as recorded. */
  async linkTarget (r: RunRecord, sha: string): Promise<string> {
    return (await this.exec([this.git, 'cat-file', 'blob', sha], { repo: this.repoOf(r.cwd, r.owner), owner: r.owner })).toString()
  }

  /** Forget what was recorded of a run (its trees' objects stay in the directory's repository). */
  async forget (runId: string): Promise<void> {
    await rm(this.recordPath(runId), { force: true })
  }
}

/** `diff-tree -z --raw` output as its entries (paths as bytes). */
function parseRaw (raw: Buffer): Array<{ path: Buffer, status: string, before: string, after: string }> {
  const entries: Array<{ path: Buffer, status: string, before: string, after: string }> = []
  let at = 0
  while (at < raw.length) {
    const metaEnd = raw.indexOf(0, at)
    if (metaEnd < 0) break
    const pathEnd = raw.indexOf(0, metaEnd + 1)
    const meta = raw.subarray(at, metaEnd).toString('latin1')
    const path = raw.subarray(metaEnd + 1, pathEnd < 0 ? raw.length : pathEnd)
    at = pathEnd < 0 ? raw.length : pathEnd + 1
    const m = /^:(\d+) (\d+) ([0-9a-f]+) ([0-9a-f]+) ([AMDT])/.exec(meta)
    if (m !== null) entries.push({ path, status: m[5] ?? 'M', before: m[3] ?? '', after: m[4] ?? '' })
  }
  return entries
}
