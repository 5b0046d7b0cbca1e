import type { FileHandle } from 'node:fs/promises'
import type { Readable } from 'node:stream'
import { Dir, PathConflict, PathForbidden, PathNotFound, PreconditionFailed, UploadTooLarge, etagOf, fsError, type Place } from './safe-fs.js'

// What the files API does to a workspace: list a directory, read a file, write one (streamed to
// disk, replacing the old one at once), delete one. Paths come checked (`placeOf`); every step
// goes through `Dir`, which follows no link.

export interface Entry { name: string, type: 'file' | 'dir' | 'link', size: number, mtime: string }

/** At most this many entries in one listing (`truncated` past it). */
export const MAX_LIST_ENTRIES = 10_000

const typeOf = (s: { isFile: () => boolean, isDirectory: () => boolean, isSymbolicLink: () => boolean }): Entry['type'] | undefined =>
  s.isFile() ? 'file' : s.isDirectory() ? 'dir' : s.isSymbolicLink() ? 'link' : undefined

/** The entries of a directory, by name (links shown, never followed; devices, sockets, FIFOs left out). */
export async function list (place: Place): Promise<{ path: string, entries: Entry[], truncated: boolean }> {
  const dir = await Dir.open(place)
  try {
    const names = (await dir.entries()).sort()
    const entries: Entry[] = []
    for (const name of names) {
      if (entries.length >= MAX_LIST_ENTRIES) return { path: place.absolute, entries, truncated: true }
      const s = await dir.lstat(name)
      const type = s === null ? undefined : typeOf(s)
      if (s === null || type === undefined) continue
      entries.push({ name, type, size: Number(s.size), mtime: new Date(Number(s.mtimeMs)).toISOString() })
    }
    return { path: place.absolute, entries, truncated: false }
  } finally {
    await dir.close()
  }
}

function nameOf (place: Place): string {
  const name = place.parts.at(-1)
  if (name === undefined) throw new PathConflict(`${place.absolute} is the workspace's root, a directory`)
  return name
}

/** A file, open for reading, with its size and ETag. The caller closes it. */
export async function openForRead (place: Place): Promise<{ fh: FileHandle, size: number, etag: string, mtime: Date }> {
  const dir = await Dir.open(place, place.parts.slice(0, -1))
  try {
    const { fh, stat } = await dir.openFile(nameOf(place))
    return { fh, size: Number(stat.size), etag: etagOf(stat), mtime: new Date(Number(stat.mtimeMs)) }
  } finally {
    await dir.close()
  }
}

/** Does `etag` (an If-Match or If-None-Match value) name `current`? `*` names any existing file. */
export function matches (header: string, current: string | null): boolean {
  if (current === null) return false
  return header.split(',').map(s => s.trim().replace(/^W\//, '')).some(t => t === '*' || t === current)
}

/**
 * Write a file from `body`, streamed to a new file beside it and renamed over it once whole (a
 * reader sees the old file or the new one, never half of one). Parents are made. More than
 * `maxBytes` is a 413 with nothing left behind; `ifMatch` that no longer names the file is a 412.
 * The file keeps the mode of the one it replaces (or `mode`; a new one: 0644).
 */
export async function write (place: Place, body: Readable, opts: { maxBytes: number, ifMatch?: string | undefined, ifNoneMatch?: string | undefined, mode?: number }): Promise<{ path: string, size: number, etag: string, created: boolean }> {
  const name = nameOf(place)
  const dir = await Dir.open(place, place.parts.slice(0, -1), true)
  try {
    const before = await dir.lstat(name)
    if (before !== null && !before.isFile()) throw before.isSymbolicLink() ? new PathForbidden(`${place.absolute} is a symbolic link: links are never replaced`) : new PathConflict(`${place.absolute} is not a regular file`)
    const check = (now: typeof before): void => {
      const tag = now === null ? null : etagOf(now)
      if (opts.ifMatch !== undefined && !matches(opts.ifMatch, tag)) throw new PreconditionFailed(`If-Match ${opts.ifMatch}: ${place.absolute} is ${tag ?? 'missing'} now`)
      if (opts.ifNoneMatch !== undefined && matches(opts.ifNoneMatch, tag)) throw new PreconditionFailed(`If-None-Match ${opts.ifNoneMatch}: ${place.absolute} exists (${tag ?? ''})`)
    }
    check(before)
    const mode = opts.mode ?? (before !== null ? Number(before.mode & 0o777n) : 0o644)
    const temp = await dir.createTemp(name, mode)
    let size = 0
    try {
      // Written by the handle itself: a write stream over it would keep it from closing.
      for await (const chunk of body as AsyncIterable<Buffer | string>) {
        const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk
        size += b.length
        if (size > opts.maxBytes) throw new UploadTooLarge(`the upload is larger than ${opts.maxBytes} bytes (MAX_UPLOAD_BYTES)`)
        let off = 0
        while (off < b.length) off += (await temp.fh.write(b, off, b.length - off)).bytesWritten
      }
      // The mode asked for, whatever the umask took of it.
      await temp.fh.chmod(mode)
      await temp.fh.close()
      // The file may have changed while the body came: the precondition holds at the moment of the switch.
      const now = await dir.lstat(name)
      check(now)
      if (now !== null && !now.isFile()) throw new PathConflict(`${place.absolute} is not a regular file`)
      await dir.rename(temp.name, name)
    } catch (err) {
      await temp.fh.close().catch(() => {})
      await dir.remove(temp.name, false).catch(() => {})
      throw err
    }
    const after = await dir.lstat(name)
    if (after === null) throw new PathNotFound(`${place.absolute} vanished as it was written`)
    return { path: place.absolute, size: Number(after.size), etag: etagOf(after), created: before === null }
  } catch (err) {
    throw err instanceof Error && 'code' in err && typeof (err as NodeJS.ErrnoException).errno === 'number' ? fsError(err, place.absolute) : err
  } finally {
    await dir.close()
  }
}

/** Delete a file, a link (not what it points to) or an empty directory. */
export async function remove (place: Place): Promise<void> {
  const name = nameOf(place)
  const dir = await Dir.open(place, place.parts.slice(0, -1))
  try {
    const s = await dir.lstat(name)
    if (s === null) throw new PathNotFound(`${place.absolute} does not exist`)
    await dir.remove(name, s.isDirectory())
  } finally {
    await dir.close()
  }
}
