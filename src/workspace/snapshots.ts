import { execFile, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import type { RunnerLogger } from '../domain/logger.js'

// What a run changed in its working directory, whether or not it is a git repository: the
// directory is recorded before the run (once its CLI could touch it) and after, as git trees in a
// repository of the server's own (`DATA_DIR/snapshots/<directory's digest>`, never the
// directory's own `.git`). Every file goes in, content and mode, so a change made by the agent's
// edit tools, by a shell command or by anything the run started shows the same. Git's index keeps
// each file's stat data: a directory recorded before is read again only where files changed.
//
// What it cannot see: what `.gitignore` files leave out (as in a repository: dependencies and
// build outputs usually), the inside of nested repositories (a directory with its own `.git`:
// one entry), files the server cannot read, and empty directories.

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

interface Record { cwd: string, before: string, after?: string }

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
 * A recording in one process: every file added to the index (unreadable ones left out: exit 1),
 * its tree written and printed; with a tree as `$1`, the changes from it follow (`diff-tree -z`).
 * A lock left by a git killed at its time limit goes first (one recording at a time per directory).
 */
const RECORD_SCRIPT = 'rm -f "$GIT_DIR/index.lock"; git add -A --ignore-errors -- . >/dev/null 2>&1; s=$?; [ "$s" -le 1 ] || exit "$s"; t=$(git write-tree) || exit 1; printf "%s\\0" "$t"; [ -z "$1" ] || exec git diff-tree -r -z --no-renames --raw "$1" "$t"'

/** The longest a recording may take (a huge directory): the run then has no changes recorded. */
const SNAPSHOT_TIMEOUT_MS = 60_000
/**
 * The longest the recording before a run may hold up its prompt: a directory that takes longer
 * (hundreds of thousands of files the first time) is not recorded, and the run goes on.
 */
export const BEFORE_TIMEOUT_MS = 15_000

export class Snapshots {
  private readonly locks = new Map<string, Promise<unknown>>()

  constructor (private readonly root: string, private readonly log: RunnerLogger, private readonly git = 'git') {}

  /** Whether git is there to record with. */
  static available (git = 'git'): Promise<boolean> {
    return new Promise(resolve => execFile(git, ['--version'], err => resolve(err === null)))
  }

  private repoOf (cwd: string): string {
    return join(this.root, createHash('sha256').update(cwd).digest('hex').slice(0, 32))
  }

  private recordPath (runId: string): string {
    return join(this.root, 'runs', `${runId}.json`)
  }

  private env (repo: string, cwd: string, index: string): NodeJS.ProcessEnv {
    return {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      GIT_DIR: repo,
      GIT_WORK_TREE: cwd,
      GIT_INDEX_FILE: index,
      GIT_CONFIG_NOSYSTEM: '1',
      GIT_CONFIG_GLOBAL: '/dev/null',
      HOME: repo,
      GIT_TERMINAL_PROMPT: '0',
      LC_ALL: 'C',
      ...GIT_CONFIG_ENV
    }
  }

  private async run (args: string[], env: NodeJS.ProcessEnv, opts: { cwd?: string, input?: string, okCodes?: number[], maxBuffer?: number } = {}): Promise<string> {
    return await new Promise((resolve, reject) => {
      const child = execFile(this.git, args, { env, cwd: opts.cwd ?? '/', maxBuffer: opts.maxBuffer ?? 256 * 1024 * 1024, timeout: SNAPSHOT_TIMEOUT_MS, encoding: 'utf8' }, (err, stdout, stderr) => {
        const code = (err as { code?: unknown } | null)?.code
        if (err !== null && !(typeof code === 'number' && (opts.okCodes ?? []).includes(code))) reject(new Error(`git ${args[0] ?? ''}: ${stderr.trim() || err.message}`))
        else resolve(stdout)
      })
      if (opts.input !== undefined) child.stdin?.end(opts.input)
    })
  }

  /** One recording at a time per directory (they share its index of stat data). */
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
   * The directory as it stands, as a tree of the directory's repository; with `from`, also the
   * raw changes from that tree (`diff-tree -z` output).
   */
  async record (cwd: string, from?: string, timeoutMs = SNAPSHOT_TIMEOUT_MS): Promise<{ tree: string, raw: string }> {
    const repo = this.repoOf(cwd)
    return await this.serial(repo, async () => {
      const env = this.env(repo, cwd, join(repo, 'index'))
      if (!existsSync(join(repo, 'HEAD'))) {
        await mkdir(repo, { recursive: true, mode: 0o700 })
        await this.run(['init', '-q', '--bare', repo], { ...env, GIT_DIR: undefined, GIT_WORK_TREE: undefined })
        await this.run(['config', 'core.bare', 'false'], env)
        await writeFile(join(repo, 'cwd'), cwd)
      }
      const out = await new Promise<string>((resolve, reject) => {
        // Under timeout(1), which runs it in a process group of its own: a recording cut at its time
        // limit ends with every git it started.
        const secs = String(Math.max(1, Math.ceil(timeoutMs / 1000)))
        execFile('timeout', ['-s', 'KILL', secs, '/bin/sh', '-c', RECORD_SCRIPT, 'record', from ?? ''], { env, cwd, maxBuffer: 256 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
          const code = (err as { code?: unknown } | null)?.code
          if (code === 137 || code === 124) reject(new Error(`recording ${cwd} took longer than ${secs} s: not recorded`))
          else if (err !== null) reject(new Error(`recording ${cwd}: ${stderr.trim() || err.message}`))
          else resolve(stdout)
        })
      })
      const cut = out.indexOf('\0')
      return { tree: out.slice(0, cut), raw: out.slice(cut + 1) }
    })
  }

  /** Record a run's directory before it runs. */
  async before (runId: string, cwd: string): Promise<void> {
    const { tree } = await this.record(cwd, undefined, BEFORE_TIMEOUT_MS)
    await mkdir(join(this.root, 'runs'), { recursive: true, mode: 0o700 })
    await this.write(runId, { cwd, before: tree })
  }

  /** Record a run's directory after it ran; its changes counted (undefined: nothing recorded before). */
  async after (runId: string): Promise<ChangeCounts | undefined> {
    const r = await this.read(runId)
    if (r === undefined) return undefined
    const { tree, raw } = await this.record(r.cwd, r.before)
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

  private async write (runId: string, r: Record): Promise<void> {
    const path = this.recordPath(runId)
    await writeFile(path + '.tmp', JSON.stringify(r), { mode: 0o600 })
    await rename(path + '.tmp', path)
  }

  /** What was recorded of a run (undefined: nothing; `after` missing: it has not ended here). */
  async read (runId: string): Promise<Record | undefined> {
    try {
      return JSON.parse(await readFile(this.recordPath(runId), 'utf8')) as Record
    } catch {
      return undefined
    }
  }

  /** The files that differ between two trees of a directory, with their sizes. */
  async between (cwd: string, from: string, to: string): Promise<FileChange[]> {
    const repo = this.repoOf(cwd)
    const env = this.env(repo, cwd, join(repo, 'index'))
    const entries = parseRaw(await this.run(['diff-tree', '-r', '-z', '--no-renames', '--raw', from, to], env))
    const shas = [...new Set(entries.flatMap(e => [e.before, e.after]).filter(s => !/^0+$/.test(s)))]
    const sizes = new Map<string, number>()
    if (shas.length > 0) {
      const out = await this.run(['cat-file', '--batch-check=%(objectname) %(objectsize)'], env, { input: shas.join('\n') + '\n' })
      for (const line of out.split('\n')) {
        const [sha, size] = line.split(' ')
        if (sha !== undefined && size !== undefined && /^\d+$/.test(size)) sizes.set(sha, Number(size))
      }
    }
    return entries.map(e => ({
      path: e.path,
      change: e.status === 'A' ? 'added' : e.status === 'D' ? 'deleted' : 'modified',
      size_before: e.status === 'A' ? null : sizes.get(e.before) ?? null,
      size_after: e.status === 'D' ? null : sizes.get(e.after) ?? null
    }))
  }

  /** A unified diff between two trees (text files; binary ones named), at most `maxBytes`. */
  async diff (cwd: string, from: string, to: string, maxBytes: number): Promise<{ text: string, truncated: boolean }> {
    const repo = this.repoOf(cwd)
    return await new Promise((resolve, reject) => {
      const child = spawn(this.git, ['diff', '--no-color', '--no-ext-diff', '--no-textconv', '--no-renames', from, to], { env: this.env(repo, cwd, join(repo, 'index')), cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] })
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
        if (!truncated && code !== 0) reject(new Error(`git diff: ${stderr.trim()}`))
        else resolve({ text: Buffer.concat(chunks).toString('utf8'), truncated })
      })
    })
  }

  /** The entries of a tree at the paths given (absent ones left out). */
  async entries (cwd: string, tree: string, paths: string[]): Promise<Map<string, TreeEntry>> {
    const out = new Map<string, TreeEntry>()
    if (paths.length === 0) return out
    const repo = this.repoOf(cwd)
    const env = this.env(repo, cwd, join(repo, 'index'))
    const raw = await this.run(['ls-tree', '-r', '-z', '--full-tree', tree], env)
    const wanted = new Set(paths)
    for (const line of raw.split('\0')) {
      const m = /^(\d+) \w+ ([0-9a-f]+)\t([\s\S]*)$/.exec(line)
      if (m !== null && wanted.has(m[3] ?? '')) out.set(m[3] ?? '', { mode: m[1] ?? '', sha: m[2] ?? '' })
    }
    return out
  }

  /**
   * An object's content, streamed (a blob of a recorded tree): git starts when it is first read,
   * and a git that fails makes the stream fail (a file is never written back half).
   */
  blob (cwd: string, sha: string): Readable {
    const repo = this.repoOf(cwd)
    const env = this.env(repo, cwd, join(repo, 'index'))
    const git = this.git
    return Readable.from((async function * () {
      const child = spawn(git, ['cat-file', 'blob', sha], { env, cwd: '/', stdio: ['ignore', 'pipe', 'ignore'] })
      const exited = new Promise<number | null>((resolve, reject) => { child.on('error', reject).on('close', resolve) })
      for await (const chunk of child.stdout) yield chunk as Buffer
      const code = await exited
      if (code !== 0) throw new Error(`git cat-file ${sha}: exit ${String(code)}`)
    })(), { objectMode: false })
  }

  /** A link's target, as recorded. */
  async linkTarget (cwd: string, sha: string): Promise<string> {
    const repo = this.repoOf(cwd)
    return await this.run(['cat-file', 'blob', sha], this.env(repo, cwd, join(repo, 'index')))
  }

  /** Forget what was recorded of a run (its trees' objects stay in the directory's repository). */
  async forget (runId: string): Promise<void> {
    await rm(this.recordPath(runId), { force: true })
  }
}

/** `diff-tree -z --raw` output as its entries. */
function parseRaw (raw: string): Array<{ path: string, status: string, before: string, after: string }> {
  const parts = raw.split('\0')
  const entries: Array<{ path: string, status: string, before: string, after: string }> = []
  for (let i = 0; i + 1 < parts.length; i += 2) {
    const m = /^:(\d+) (\d+) ([0-9a-f]+) ([0-9a-f]+) ([AMDT])/.exec(parts[i] ?? '')
    if (m !== null) entries.push({ path: parts[i + 1] ?? '', status: m[5] ?? 'M', before: m[3] ?? '', after: m[4] ?? '' })
  }
  return entries
}
