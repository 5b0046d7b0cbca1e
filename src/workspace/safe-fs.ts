import { randomBytes } from 'node:crypto'
import { constants, type BigIntStats } from 'node:fs'
import { lchown, lstat, mkdir, open, readdir, readlink, rename, rmdir, unlink, type FileHandle } from 'node:fs/promises'
import { isAbsolute, relative, resolve, sep } from 'node:path'
import { DomainError, InvalidRequest, withProblem } from '../domain/errors.js'

// A key's files, reached without ever following a link. Every path is walked from its root one
// component at a time, each opened with O_NOFOLLOW and the next one reached through the open
// directory (`/proc/self/fd/N/name`: openat, mkdirat, unlinkat, renameat by another name). A
// component swapped for a link while the walk goes on makes it fail; it never leads outside. A
// server running as root makes what it creates its directory's owner's (an agent identity's area
// stays its own).

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK } = constants

export const PathForbidden = class extends DomainError { constructor (m: string) { super('path_forbidden', m) } }
export const PathNotFound = class extends DomainError { constructor (m: string) { super('path_not_found', m) } }
export const PathConflict = class extends DomainError { constructor (m: string) { super('path_conflict', m) } }
export const PreconditionFailed = class extends DomainError { constructor (m: string) { super('precondition_failed', m) } }
export const UploadTooLarge = class extends DomainError { constructor (m: string) { super('upload_too_large', m) } }

/** Where a key may reach files: its roots, and the directory a relative path starts from. */
export interface Workspace { roots: readonly string[], base: string }

/** A path inside a workspace: its root, the components below it, and the absolute path. */
export interface Place { root: string, parts: string[], absolute: string }

const bad = (param: string, message: string): Error => withProblem(new InvalidRequest(message), { problem: { errors: [{ path: `/${param}`, message }] } })

/** `path` (relative to the workspace's base, or absolute) as a place inside one of its roots. */
export function placeOf (ws: Workspace, path: string | undefined, param = 'path'): Place {
  if (path === undefined || path === '') throw bad(param, `${param} is required`)
  if (path.includes('\0')) throw bad(param, `${param} must not hold a NUL byte`)
  const absolute = resolve(ws.base, path)
  const root = ws.roots.find(r => isInside(r, absolute))
  if (root === undefined) throw new PathForbidden(`${path} is outside this key's workspace (${ws.roots.join(', ')})`)
  return { root, parts: relative(root, absolute).split(sep).filter(p => p !== ''), absolute }
}

function isInside (root: string, child: string): boolean {
  const rel = relative(root, child)
  return rel === '' || (rel !== '..' && !rel.startsWith('..' + sep) && !isAbsolute(rel))
}

const asRoot = process.getuid?.() === 0

/** An open directory of a workspace: its entries are reached through it, never through a path. */
export class Dir {
  private constructor (private readonly fh: FileHandle, readonly absolute: string, private readonly owner: { uid: number, gid: number }) {}

  /** The directory at `place` (`parts` of it: all by default); `create` makes what is missing. */
  static async open (place: Place, parts: string[] = place.parts, create = false): Promise<Dir> {
    // A root is a real path the operator configured; not even it is followed if it became a link.
    let fh = await open(place.root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW).catch((err: unknown) => { throw fsError(err, place.root) })
    let at = place.root
    try {
      for (const part of parts) {
        const path = `/proc/self/fd/${fh.fd}/${part}`
        let next: FileHandle
        try {
          next = await open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code
          if (code === 'ENOENT' && create) {
            const st = await fh.stat()
            await mkdir(path, 0o755).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'EEXIST') throw e })
            next = await open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            // Through the open directory: a link swapped in after the mkdir is never what is chowned.
            if (asRoot) await next.chown(st.uid, st.gid)
          } else if (code === 'ENOTDIR' && (await lstat(path).catch(() => null))?.isSymbolicLink() === true) {
            throw new PathForbidden(`${at}/${part} is a symbolic link: links are never followed`)
          } else throw fsError(err, `${at}/${part}`)
        }
        await fh.close()
        fh = next
        at = `${at}/${part}`
      }
      const st = await fh.stat()
      return new Dir(fh, at, { uid: st.uid, gid: st.gid })
    } catch (err) {
      await fh.close().catch(() => {})
      throw err
    }
  }

  /** An entry of this directory, by a path that does not pass through any name. */
  at (name: string): string {
    return `/proc/self/fd/${this.fh.fd}/${name}`
  }

  /** The entry named, without following it (null when there is none). */
  async lstat (name: string): Promise<BigIntStats | null> {
    return await lstat(this.at(name), { bigint: true }).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null
      throw err
    })
  }

  /** A directory of this directory, opened without following a link; `create` makes it if missing. */
  async openChild (name: string, create = false): Promise<Dir> {
    const flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW
    let fh: FileHandle
    try {
      fh = await open(this.at(name), flags)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !create) throw fsError(err, `${this.absolute}/${name}`)
      const made = await mkdir(this.at(name), 0o755).then(() => true, (e: NodeJS.ErrnoException) => { if (e.code !== 'EEXIST') throw fsError(e, `${this.absolute}/${name}`); return false })
      try {
        fh = await open(this.at(name), flags)
      } catch (e) {
        throw fsError(e, `${this.absolute}/${name}`)
      }
      // Through the open directory, not its name: a link swapped in meanwhile is never chowned.
      if (made && asRoot) await fh.chown(this.owner.uid, this.owner.gid)
    }
    const st = await fh.stat()
    return new Dir(fh, `${this.absolute}/${name}`, { uid: st.uid, gid: st.gid })
  }

  /** What the link named says (the link is read, never followed). */
  async readlink (name: string): Promise<string> {
    return await readlink(this.at(name))
  }

  async entries (): Promise<string[]> {
    return await readdir(`/proc/self/fd/${this.fh.fd}`)
  }

  /** A regular file of this directory, open for reading (a link, a directory, a device: refused). */
  async openFile (name: string): Promise<{ fh: FileHandle, stat: BigIntStats }> {
    let fh: FileHandle
    try {
      // O_NONBLOCK: a FIFO answers at once instead of hanging the request; it is refused below.
      fh = await open(this.at(name), O_RDONLY | O_NOFOLLOW | O_NONBLOCK)
    } catch (err) {
      throw fsError(err, `${this.absolute}/${name}`)
    }
    const stat = await fh.stat({ bigint: true })
    if (!stat.isFile()) {
      await fh.close()
      throw new PathConflict(`${this.absolute}/${name} is not a regular file`)
    }
    return { fh, stat }
  }

  /** A new file, open for writing under a name no one else has (for a write that renames into place). */
  async createTemp (name: string, mode = 0o644): Promise<{ fh: FileHandle, name: string }> {
    const temp = `.${name.slice(0, 200)}.${randomBytes(6).toString('hex')}.part`
    const fh = await open(this.at(temp), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode)
    if (asRoot) await fh.chown(this.owner.uid, this.owner.gid)
    return { fh, name: temp }
  }

  async rename (from: string, to: string): Promise<void> {
    await rename(this.at(from), this.at(to))
  }

  async remove (name: string, dir: boolean): Promise<void> {
    try {
      if (dir) await rmdir(this.at(name))
      else await unlink(this.at(name))
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOTEMPTY' || code === 'EEXIST') throw new PathConflict(`${this.absolute}/${name} is a directory that is not empty`)
      throw fsError(err, `${this.absolute}/${name}`)
    }
  }

  async mkdir (name: string): Promise<void> {
    await mkdir(this.at(name), 0o755)
    if (!asRoot) return
    // Through the directory just made: whatever is swapped in for it meanwhile is never chowned.
    const fh = await open(this.at(name), O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
    try {
      await fh.chown(this.owner.uid, this.owner.gid)
    } finally {
      await fh.close()
    }
  }

  /** A directory of the server's own in this one (0700, never handed to the directory's owner): a private staging area. */
  async mkdirPrivate (name: string): Promise<void> {
    await mkdir(this.at(name), 0o700)
  }

  /** A link made in this directory becomes its owner's (the link itself, never what it points to). */
  async ownLink (name: string): Promise<void> {
    if (asRoot) await lchown(this.at(name), this.owner.uid, this.owner.gid)
  }

  async close (): Promise<void> {
    await this.fh.close().catch(() => {})
  }
}

/** An error of the file system as the domain's: missing, a link, not a directory. */
export function fsError (err: unknown, path: string): Error {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ENOENT') return new PathNotFound(`${path} does not exist`)
  if (code === 'ELOOP' || code === 'EMLINK') return new PathForbidden(`${path} is a symbolic link: links are never followed`)
  if (code === 'ENOTDIR') return new PathConflict(`${path} is not a directory`)
  if (code === 'EISDIR') return new PathConflict(`${path} is a directory`)
  if (code === 'EACCES' || code === 'EPERM') return new PathForbidden(`${path}: permission denied`)
  if (code === 'EEXIST') return new PathConflict(`${path} exists`)
  if (code === 'ENAMETOOLONG') return withProblem(new InvalidRequest(`${path}: a name is too long`), { problem: { errors: [{ path: '/path', message: 'a name is too long' }] } })
  if (code === 'ENOSPC' || code === 'EDQUOT') return new DomainError('insufficient_storage', `no space left for ${path}`)
  if (code === 'EROFS') return new PathForbidden(`${path} is on a read-only file system`)
  return err as Error
}

/** A strong validator of a file's content as it stands: changes with every write (or replacement). */
export function etagOf (s: BigIntStats): string {
  return `"${s.ino.toString(36)}-${s.size.toString(36)}-${s.mtimeNs.toString(36)}"`
}
