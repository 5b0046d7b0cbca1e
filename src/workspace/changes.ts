import type { BigIntStats } from 'node:fs'
import { symlink } from 'node:fs/promises'
import { relative } from 'node:path'
import { DomainError } from '../domain/errors.js'
import { write } from './files.js'
import { Dir, PathConflict, placeOf, type Place, type Workspace } from './safe-fs.js'
import type { FileChange, RunRecord, Snapshots } from './snapshots.js'

// A run's changes as the API shows them (a list, a unified diff) and their revert: the files the
// run changed put back as they were before it, only while nothing since has changed them again.
// The revert writes through `safe-fs`, walking from the allowed roots: a run that swapped its
// directory (or any directory on the way) for a link after it ended makes the revert fail, never
// write elsewhere.

/** At most this many files in a list of changes (`truncated` past it). */
export const MAX_CHANGES_LISTED = 10_000

export const ChangesNotRecorded = class extends DomainError { constructor (m: string) { super('changes_not_recorded', m) } }
export const ChangedSince = class extends DomainError { constructor (m: string) { super('changed_since', m) } }
export const RunNotEnded = class extends DomainError { constructor (m: string) { super('run_not_ended', m) } }

type Recorded = RunRecord & { after: string }

export class RunChanges {
  /** Reverts in progress, by working directory: one at a time in each. */
  private readonly reverting = new Map<string, Promise<unknown>>()

  /** `roots`: the allowed roots, where every revert's walk starts. */
  constructor (private readonly snapshots: Snapshots, private readonly roots: readonly string[]) {}

  private async recorded (runId: string): Promise<Recorded> {
    const r = await this.snapshots.read(runId)
    if (r === undefined) throw new ChangesNotRecorded(`the changes of run ${runId} were not recorded here (recording was off or failed, or the run ran on another instance)`)
    if (r.failed !== undefined) throw new ChangesNotRecorded(`the directory of run ${runId} could not be recorded after it: ${r.failed}`)
    if (r.after === undefined) throw new ChangesNotRecorded(`run ${runId} has not ended: its changes are known once it has`)
    return { ...r, after: r.after }
  }

  /** The files a run changed in its working directory. */
  async list (runId: string): Promise<{ working_directory: string, files: FileChange[], truncated: boolean }> {
    const r = await this.recorded(runId)
    const files = (await this.snapshots.between(r, r.before, r.after)).map(({ unreadable: _, ...f }) => f)
    return { working_directory: r.cwd, files: files.slice(0, MAX_CHANGES_LISTED), truncated: files.length > MAX_CHANGES_LISTED }
  }

  /** What a run changed as a unified diff (text files; binary ones named), at most `maxBytes`. */
  async diff (runId: string, maxBytes: number): Promise<{ text: string, truncated: boolean }> {
    const r = await this.recorded(runId)
    return await this.snapshots.diff(r, r.before, r.after, maxBytes)
  }

  /**
   * Put back what a run changed: its added files removed, its modified and deleted ones written
   * again as they were (content, executable bit, links as links). Refused whole (`changed_since`)
   * when any of those files changed again since the run ended.
   */
  async revert (runId: string): Promise<{ working_directory: string, files: FileChange[] }> {
    const r = await this.recorded(runId)
    const before = this.reverting.get(r.cwd) ?? Promise.resolve()
    const mine = before.catch(() => {}).then(async () => await this.revertNow(runId, r))
    this.reverting.set(r.cwd, mine)
    try {
      return await mine
    } finally {
      if (this.reverting.get(r.cwd) === mine) this.reverting.delete(r.cwd)
    }
  }

  private async revertNow (runId: string, r: Recorded): Promise<{ working_directory: string, files: FileChange[] }> {
    const changes = await this.snapshots.between(r, r.before, r.after)
    const odd = changes.filter(c => c.unreadable === true)
    if (odd.length > 0) throw new PathConflict(`run ${runId} changed ${odd.length} file(s) whose names are not UTF-8 (${odd.slice(0, 3).map(c => JSON.stringify(c.path)).join(', ')}): they cannot be reverted through the API; nothing was reverted`)
    const { tree: now } = await this.snapshots.record(r.cwd, r.owner)
    const touched = new Set(changes.map(c => c.path))
    const since = (await this.snapshots.between(r, r.after, now)).filter(c => touched.has(c.path)).map(c => c.path)
    if (since.length > 0) {
      throw Object.assign(new ChangedSince(`${since.length} of the files run ${runId} changed have changed again since (${since.slice(0, 10).join(', ')}${since.length > 10 ? ', …' : ''}): nothing was reverted`), { problem: { paths: since.slice(0, 1000) } })
    }
    const was = await this.snapshots.entries(r, r.before, changes.filter(c => c.change !== 'added').map(c => c.path))
    // From the allowed roots, never from the directory's path itself: no link on the way is followed.
    const ws: Workspace = { roots: this.roots, base: r.cwd }
    const at = (path: string): Place => {
      const place = placeOf(ws, path)
      if (relative(r.cwd, place.absolute).startsWith('..')) throw new PathConflict(`${path} lies outside the run's directory`)
      return place
    }
    // Deepest first: a file goes before the directory it was added in.
    for (const c of [...changes].sort((a, b) => b.path.length - a.path.length)) {
      const place = at(c.path)
      const entry = was.get(c.path)
      if (c.change === 'added' || entry === undefined) {
        await removeFile(place)
        await pruneEmptyParents(place, r.cwd)
        continue
      }
      if (entry.mode === '160000') continue // A nested repository: its inside was never recorded.
      if (entry.mode === '120000') {
        const target = await this.snapshots.linkTarget(r, entry.sha)
        await removeFile(place)
        const dir = await Dir.open(place, place.parts.slice(0, -1), true)
        try {
          const name = place.parts.at(-1) ?? ''
          await symlink(target, dir.at(name))
          await dir.ownLink(name)
        } finally {
          await dir.close()
        }
        continue
      }
      await removeIfLink(place)
      await write(place, this.snapshots.blob(r, entry.sha), { maxBytes: Number.MAX_SAFE_INTEGER, mode: entry.mode === '100755' ? 0o755 : 0o644 })
    }
    // The revert is recorded as the directory's latest state: the next run's changes start from it.
    await this.snapshots.record(r.cwd, r.owner)
    return { working_directory: r.cwd, files: changes.map(({ unreadable: _, ...f }) => f) }
  }
}

/** Remove the entry at `place` when `which` says so of it (nothing when there is none). */
async function removeEntry (place: Place, which: (s: BigIntStats) => boolean): Promise<void> {
  const dir = await Dir.open(place, place.parts.slice(0, -1)).catch(() => undefined)
  if (dir === undefined) return
  try {
    const name = place.parts.at(-1) ?? ''
    const s = await dir.lstat(name)
    if (s !== null && which(s)) await dir.remove(name, false)
  } finally {
    await dir.close()
  }
}

/** Remove a file or link (nothing when there is none). */
const removeFile = async (place: Place): Promise<void> => { await removeEntry(place, s => !s.isDirectory()) }

/** Where a file is to be written back, a link the run put there goes first (it is replaced, never written through). */
const removeIfLink = async (place: Place): Promise<void> => { await removeEntry(place, s => s.isSymbolicLink()) }

/** Directories left empty by removing a file the run added, up to the run's directory. */
async function pruneEmptyParents (place: Place, cwd: string): Promise<void> {
  const depth = relative(place.root, cwd).split('/').filter(p => p !== '').length
  for (let n = place.parts.length - 1; n > depth; n--) {
    const dir = await Dir.open(place, place.parts.slice(0, n - 1)).catch(() => undefined)
    if (dir === undefined) return
    try {
      await dir.remove(place.parts[n - 1] ?? '', true)
    } catch {
      return // Not empty (or gone): the rest above stays.
    } finally {
      await dir.close()
    }
  }
}
