import { randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import { rename, type FileHandle } from 'node:fs/promises'
import { Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGunzip, createGzip } from 'node:zlib'
import tarStream from 'tar-stream'
import yauzl from 'yauzl'
import { DomainError, InvalidRequest } from '../domain/errors.js'
import { Dir, PathConflict, PathForbidden, PathNotFound, fsError, type Place } from './safe-fs.js'

// Whole directories in and out of a workspace: an uploaded .tar.gz or .zip unpacked into one, and
// one packed as a streamed .tar.gz. An archive is hostile until proven otherwise: every entry is
// checked as it comes (no absolute name, no `..`, no link, no device, no more entries or bytes
// than allowed, counted as written, never as declared) and lands first in a hidden staging
// directory inside the target, so that a refusal midway leaves the target as it was and the
// final moves are renames on one file system. Every step goes through `Dir` (safe-fs.ts): each
// directory is opened without following a link, so a link planted in the target is never a way
// out of it. A server running as root makes what it creates its directory's owner's.

export interface UnpackLimits { maxBytes: number, maxEntries: number }
export type ArchiveKind = 'tar.gz' | 'zip'

const { S_IFMT, S_IFREG, S_IFDIR, S_IFLNK } = constants

/** At most this many components in an entry's name (each level of the tree holds a descriptor or two). */
const MAX_DEPTH = 100
/** At most this long, an entry's name (PATH_MAX). */
const MAX_NAME = 4096
/** Bytes read from a file at a time when packing. */
const CHUNK = 64 * 1024

const asRoot = process.getuid?.() === 0

/** Sniff the kind from the first bytes (gzip 1f 8b; zip 50 4b 03 04 / 50 4b 05 06 for empty) or undefined. */
export function kindOf (head: Buffer): ArchiveKind | undefined {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'tar.gz'
  if (head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b && ((head[2] === 0x03 && head[3] === 0x04) || (head[2] === 0x05 && head[3] === 0x06))) return 'zip'
  return undefined
}

const refused = (message: string): Error => new InvalidRequest(message)
const quote = (name: string): string => JSON.stringify(name)

/** An entry's name as components below the target; absolute names, `..`, NUL bytes refused. */
function partsOf (name: string): string[] {
  if (name.includes('\0')) throw refused(`entry ${quote(name)}: names with a NUL byte are refused`)
  if (name.length > MAX_NAME) throw refused(`entry ${quote(name.slice(0, 100) + '…')}: names longer than ${MAX_NAME} characters are refused`)
  if (name.startsWith('/')) throw refused(`entry ${quote(name)}: absolute names are refused`)
  const parts = name.split('/').filter(p => p !== '' && p !== '.')
  if (parts.includes('..')) throw refused(`entry ${quote(name)}: names with a .. component are refused`)
  if (parts.length > MAX_DEPTH) throw refused(`entry ${quote(name)}: more than ${MAX_DEPTH} levels deep`)
  return parts
}

/** A stream that passes at most `max` bytes on, and fails with `message` past that. */
function capped (max: number, message: string): Transform {
  let seen = 0
  return new Transform({
    transform (chunk: Buffer, _enc, done) {
      seen += chunk.length
      if (seen > max) done(refused(message))
      else done(null, chunk)
    }
  })
}

/** All of `chunk` written at the file's position (a write may take only part of it). */
async function writeAll (fh: FileHandle, chunk: Buffer): Promise<void> {
  for (let at = 0; at < chunk.length;) at += (await fh.write(chunk, at)).bytesWritten
}

/** `fn` with the directory `parts` below `base` (made when `create`), closed after. */
async function within<T> (base: Dir, parts: string[], create: boolean, fn: (dir: Dir) => Promise<T>): Promise<T> {
  let dir = base
  try {
    for (const part of parts) {
      const next = await dir.openChild(part, create)
      if (dir !== base) await dir.close()
      dir = next
    }
    return await fn(dir)
  } finally {
    if (dir !== base) await dir.close()
  }
}

/**
 * What an archive's entries make in the staging tree, each checked as it comes: the count of
 * entries, the bytes actually written, and what each staged path is (a file where the archive
 * also has a directory, or the other way round, is refused: the archive contradicts itself).
 */
class Staging {
  private entries = 0
  private bytes = 0
  private readonly kinds = new Map<string, 'file' | 'dir'>()

  constructor (private readonly tree: Dir, private readonly limits: UnpackLimits) {}

  /** One more entry; past maxEntries, refused. */
  count (name: string): void {
    if (++this.entries > this.limits.maxEntries) throw refused(`entry ${quote(name)}: the archive has more than ${this.limits.maxEntries} entries`)
  }

  /** The entry's components, claimed as `kind` (its parents as directories). */
  private claim (name: string, kind: 'file' | 'dir'): string[] {
    const parts = partsOf(name)
    for (let i = 1; i <= parts.length; i++) {
      const key = parts.slice(0, i).join('/')
      const want = i === parts.length ? kind : 'dir'
      const had = this.kinds.get(key)
      if (had !== undefined && had !== want) throw refused(`entry ${quote(name)}: ${key} is both a file and a directory in the archive`)
      this.kinds.set(key, want)
    }
    return parts
  }

  async dir (name: string): Promise<void> {
    this.count(name)
    const parts = this.claim(name, 'dir')
    await this.named(name, async () => { await within(this.tree, parts, true, async () => {}) })
  }

  /** A file from `data`, written to the staging tree (a later entry of the same name replaces it). */
  async file (name: string, executable: boolean, data: AsyncIterable<Buffer>): Promise<void> {
    this.count(name)
    const parts = this.claim(name, 'file')
    const last = parts.pop()
    if (last === undefined) throw refused(`entry ${quote(name)}: a file with no name`)
    const mode = executable ? 0o755 : 0o644
    await this.named(name, async () => {
      await within(this.tree, parts, true, async dir => {
        const temp = await dir.createTemp(last, mode)
        try {
          for await (const chunk of data) {
            this.bytes += chunk.length
            if (this.bytes > this.limits.maxBytes) throw refused(`entry ${quote(name)}: the archive unpacks to more than ${this.limits.maxBytes} bytes`)
            await writeAll(temp.fh, chunk)
          }
          await temp.fh.chmod(mode) // exactly: the umask took bits from the mode it was created with
        } finally {
          await temp.fh.close()
        }
        await dir.rename(temp.name, last)
      })
    })
  }

  /** `fn`, with a name too long for the file system refused as the entry's fault. */
  private async named (name: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn()
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENAMETOOLONG') throw refused(`entry ${quote(name)}: a name too long for the file system`)
      throw err
    }
  }
}

/** How much of the stream around the files (headers, padding, compressed form) is allowed beyond maxBytes. */
const envelope = (limits: UnpackLimits): number => limits.maxBytes + (limits.maxEntries + 2) * 4096

/** The entries of a gzipped tar stream into the staging tree. */
async function fromTarGz (body: Readable, staging: Staging, limits: UnpackLimits): Promise<void> {
  const cap = envelope(limits)
  const extract = tarStream.extract()
  // The tar stream is capped as well as the files in it: a gzip of zeros is endless padding.
  const fed = pipeline(body, capped(cap, `the archive is larger than ${cap} bytes`), createGunzip(), capped(cap, `the archive unpacks to more than ${cap} bytes`), extract)
  fed.catch(() => {}) // awaited below; meanwhile its failure also ends the loop
  try {
    for await (const entry of extract) {
      const { name, type, mode, linkname } = entry.header
      switch (type) {
        case 'file':
        case 'contiguous-file':
          await staging.file(name, (mode & 0o100) !== 0, entry as AsyncIterable<Buffer>)
          break
        case 'directory':
          await staging.dir(name)
          break
        case 'symlink':
          throw refused(`entry ${quote(name)}: a symbolic link (to ${quote(linkname)}); links are refused`)
        case 'link':
          throw refused(`entry ${quote(name)}: a hard link (to ${quote(linkname)}); links are refused`)
        case 'character-device':
        case 'block-device':
          throw refused(`entry ${quote(name)}: a device; only files and directories are unpacked`)
        case 'fifo':
          throw refused(`entry ${quote(name)}: a FIFO; only files and directories are unpacked`)
        default:
          throw refused(`entry ${quote(name)}: an entry of type ${type ?? 'unknown'}; only files and directories are unpacked`)
      }
    }
    await fed
  } catch (err) {
    extract.destroy()
    await fed.catch(() => {})
    throw err
  }
}

/**
 * A spooled zip as yauzl reads it: through a file this module opened (no-follow) and closes,
 * never a descriptor or path of yauzl's own.
 */
class SpoolReader extends yauzl.RandomAccessReader {
  constructor (private readonly fh: FileHandle) { super() }

  override _readStreamForRange (start: number, end: number): Readable {
    const fh = this.fh
    return Readable.from((async function * () {
      for (let at = start; at < end;) {
        const n = Math.min(CHUNK, end - at)
        const { bytesRead, buffer } = await fh.read(Buffer.allocUnsafe(n), 0, n, at)
        if (bytesRead === 0) throw new Error('the spooled archive ended early')
        at += bytesRead
        yield buffer.subarray(0, bytesRead)
      }
    })(), { objectMode: false })
  }

  override read (buffer: Buffer, offset: number, length: number, position: number, callback: (err: Error | null) => void): void {
    const fill = async (): Promise<void> => {
      for (let done = 0; done < length;) {
        const { bytesRead } = await this.fh.read(buffer, offset + done, length - done, position + done)
        if (bytesRead === 0) throw new Error('the spooled archive ended early')
        done += bytesRead
      }
    }
    fill().then(() => { callback(null) }, (err: Error) => { callback(err) })
  }
}

/**
 * The entries of a zip into the staging tree. A zip is read from its end (the central
 * directory), so the upload is spooled to a file in the staging directory first.
 */
async function fromZip (body: Readable, stage: Dir, staging: Staging, limits: UnpackLimits): Promise<void> {
  const cap = envelope(limits)
  const spool = await stage.createTemp('upload.zip', 0o600)
  let size = 0
  try {
    // Written chunk by chunk, not through a write stream: a FileHandle's stream made with
    // autoClose: false keeps a reference to it that makes fh.close() wait forever.
    for await (const chunk of body as AsyncIterable<Buffer>) {
      size += chunk.length
      if (size > cap) throw refused(`the archive is larger than ${cap} bytes`)
      await writeAll(spool.fh, chunk)
    }
  } finally {
    await spool.fh.close()
  }
  const { fh } = await stage.openFile(spool.name)
  try {
    // Names undecoded: they are checked here, each refusal naming its entry.
    const zip = await yauzl.fromRandomAccessReaderPromise(new SpoolReader(fh), size, { lazyEntries: true, autoClose: false, decodeStrings: false, validateEntrySizes: true })
    try {
      if (zip.entryCount > limits.maxEntries) throw refused(`the archive has ${zip.entryCount} entries, more than ${limits.maxEntries}`)
      for await (const entry of zip.eachEntry()) {
        const name = yauzl.getFileNameLowLevel(entry.generalPurposeBitFlag, entry.fileNameRaw, entry.extraFields, false)
        // The high 16 bits are the Unix mode when the zip was made on Unix (0 otherwise).
        const mode = entry.externalFileAttributes >>> 16
        const type = mode & S_IFMT
        if (type === S_IFLNK) throw refused(`entry ${quote(name)}: a symbolic link; links are refused`)
        if (type !== 0 && type !== S_IFREG && type !== S_IFDIR) throw refused(`entry ${quote(name)}: a device, FIFO or socket; only files and directories are unpacked`)
        if (entry.isEncrypted()) throw refused(`entry ${quote(name)}: encrypted entries are refused`)
        if (name.endsWith('/') || type === S_IFDIR) {
          await staging.dir(name)
          continue
        }
        if (!entry.canDecodeFileData()) throw refused(`entry ${quote(name)}: compression method ${entry.compressionMethod} is not supported`)
        const data = await zip.openReadStreamPromise(entry)
        try {
          await staging.file(name, (mode & 0o100) !== 0, data)
        } finally {
          data.destroy()
        }
      }
    } finally {
      zip.close()
    }
  } finally {
    await fh.close()
  }
}

/** Can every staged entry take its place in `dst`? A first pass that changes nothing. */
async function check (src: Dir, dst: Dir): Promise<void> {
  for (const name of await src.entries()) {
    const s = await src.lstat(name)
    const d = await dst.lstat(name)
    if (s === null || d === null) continue // made or moved as it is
    const where = `${dst.absolute}/${name}`
    if (d.isSymbolicLink()) throw new PathForbidden(`${where} is a symbolic link: links are never followed or replaced`)
    if (s.isDirectory()) {
      if (!d.isDirectory()) throw new PathConflict(`${where} is not a directory; the archive has a directory there`)
      await within(src, [name], false, async sub => { await within(dst, [name], false, async into => { await check(sub, into) }) })
    } else if (d.isDirectory()) throw new PathConflict(`${where} is a directory; the archive has a file there`)
    else if (!d.isFile()) throw new PathConflict(`${where} is not a regular file`)
  }
}

/** Move the staged files into `dst`: directories made as needed, an existing file replaced. */
async function move (src: Dir, dst: Dir, done: { files: number, bytes: number }): Promise<void> {
  // Moved files become the owner's of the directory they land in (the staging tree is the server's own).
  const owner = asRoot ? await dst.lstat('.') : null
  for (const name of (await src.entries()).sort()) {
    const s = await src.lstat(name)
    if (s === null) continue
    if (s.isDirectory()) {
      await within(src, [name], false, async sub => { await within(dst, [name], true, async into => { await move(sub, into, done) }) })
      continue
    }
    // Checked again at the last moment: the target may have changed since the first pass.
    const d = await dst.lstat(name)
    const where = `${dst.absolute}/${name}`
    if (d?.isSymbolicLink() === true) throw new PathForbidden(`${where} is a symbolic link: links are never replaced`)
    if (d?.isDirectory() === true) throw new PathConflict(`${where} is a directory; the archive has a file there`)
    if (s.nlink > 1n) throw new PathConflict(`${where}: the staged file has other names; nothing of the archive made it so`)
    if (owner !== null) {
      const { fh } = await src.openFile(name)
      try {
        await fh.chown(Number(owner.uid), Number(owner.gid))
      } finally {
        await fh.close()
      }
    }
    await rename(src.at(name), dst.at(name))
    done.files++
    done.bytes += Number(s.size)
  }
}

/** Remove `name` from `dir`, and everything in it, without following a link. */
async function removeTree (dir: Dir, name: string): Promise<void> {
  const s = await dir.lstat(name)
  if (s === null) return
  if (s.isDirectory()) {
    await within(dir, [name], false, async sub => {
      for (const entry of await sub.entries()) await removeTree(sub, entry)
    })
  }
  await dir.remove(name, s.isDirectory())
}

/** How many of `place`'s components exist (a symbolic link among them: refused at once). */
async function existing (place: Place): Promise<number> {
  let dir = await Dir.open(place, [])
  let n = 0
  try {
    for (const part of place.parts) {
      const next = await dir.openChild(part).catch((err: unknown) => { if (err instanceof PathNotFound) return null; throw err })
      if (next === null) break
      await dir.close()
      dir = next
      n++
    }
  } finally {
    await dir.close()
  }
  return n
}

/** Remove the directories of `place` past the first `kept` components, deepest first, while empty. */
async function unmake (place: Place, kept: number): Promise<void> {
  for (let i = place.parts.length - 1; i >= kept; i--) {
    const name = place.parts[i]
    if (name === undefined) return
    const parent = await Dir.open(place, place.parts.slice(0, i)).catch(() => null)
    if (parent === null) return
    try {
      await parent.remove(name, true)
    } catch {
      return // not empty (someone else's now) or gone: left as it is
    } finally {
      await parent.close()
    }
  }
}

/** A failure as the caller should see it: a decoder's plain Error is a corrupt archive. */
function asDomain (err: unknown, kind: ArchiveKind, place: Place): unknown {
  if (err instanceof DomainError || !(err instanceof Error)) return err
  if ((err as NodeJS.ErrnoException).syscall !== undefined) return fsError(err, place.absolute)
  // zlib, tar-stream and yauzl fail with a plain Error (zlib's with a Z_ code); Node's own stream errors are subclasses.
  if (err.constructor === Error) return refused(`the ${kind} archive is corrupt: ${err.message}`)
  return err
}

/**
 * Unpack `body` into the directory at `place` (made if missing, with its parents). All or nothing:
 * entries are extracted into a fresh hidden staging directory inside the target (so the final moves
 * are renames on one file system), every entry checked as it comes; on any refusal or error the
 * staging directory is removed and nothing is left in the target. Then each file is moved into place
 * (directories made as needed, an existing file replaced, a conflict between a file and a directory a
 * PathConflict). Refused with InvalidRequest, naming the entry: absolute names, `..`, NUL bytes,
 * links, devices, FIFOs, more than maxEntries entries or maxBytes written, a corrupt archive.
 * Only the owner-executable bit of a file's mode is kept (0o755 or 0o644). A zip is spooled to a
 * file in the staging directory first (it is read from its end). The upload and the tar stream are
 * capped too, at maxBytes plus 4 KiB an allowed entry (headers, padding, a zip's directory).
 */
export async function unpack (place: Place, body: Readable, kind: ArchiveKind, limits: UnpackLimits): Promise<{ path: string, files: number, bytes: number }> {
  const had = await existing(place)
  let target: Dir
  try {
    target = await Dir.open(place, place.parts, true)
  } catch (err) {
    await unmake(place, had)
    throw err
  }
  const stageName = `.unpack.${randomBytes(6).toString('hex')}.part`
  const done = { files: 0, bytes: 0 }
  let ok = false
  try {
    // The server's own, closed to everyone else: nothing can be planted in it while it fills.
    await target.mkdirPrivate(stageName)
    await within(target, [stageName], false, async stage => {
      await stage.mkdir('tree')
      await within(stage, ['tree'], false, async tree => {
        const staging = new Staging(tree, limits)
        if (kind === 'zip') await fromZip(body, stage, staging, limits)
        else await fromTarGz(body, staging, limits)
        await check(tree, target)
        // Past the check, a failure can only come from a change made meanwhile: what moved stays.
        await move(tree, target, done)
      })
    })
    ok = true
    return { path: place.absolute, ...done }
  } catch (err) {
    throw asDomain(err, kind, place)
  } finally {
    await removeTree(target, stageName).catch(() => {})
    await target.close()
    if (!ok && done.files === 0) await unmake(place, had)
  }
}

/** A tar entry's content, as it is written into the tar stream (a streamx Writable). */
type Sink = ReturnType<tarStream.Pack['entry']>

/** Wait for `sink` to take more, or fail if it closes first. */
async function drained (sink: Sink): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const settle = (err?: Error): void => {
      sink.off('drain', onDrain)
      sink.off('close', onClose)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onDrain = (): void => { settle() }
    const onClose = (): void => { settle(new Error('the tar stream was closed')) }
    sink.on('drain', onDrain)
    sink.on('close', onClose)
  })
}

/** One entry into `tar`, its content (a file's) written by `body`; resolves once it is in. */
async function add (tar: tarStream.Pack, header: Partial<tarStream.Header> & { name: string }, body?: (sink: Sink) => Promise<void>): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    let sink: Sink
    try {
      sink = tar.entry(header, err => { if (err != null) reject(err); else resolve() })
    } catch (err) {
      reject(err)
      return
    }
    // Its failures come through the callback (and destroy the whole stream): none unhandled here.
    sink.on('error', () => {})
    // A failure of the body destroys the entry, and with it the whole stream.
    if (body !== undefined) body(sink).then(() => sink.end(undefined), (err: Error) => { sink.destroy(err) })
  })
}

/** A file's first `size` bytes into `sink` (a file that shrinks meanwhile is a failure, not a short entry). */
async function copy (fh: FileHandle, size: number, sink: Sink, path: string): Promise<void> {
  for (let at = 0; at < size;) {
    const { bytesRead, buffer } = await fh.read(Buffer.allocUnsafe(Math.min(CHUNK, size - at)), 0, Math.min(CHUNK, size - at), at)
    if (bytesRead === 0) throw new Error(`${path} shrank while it was packed`)
    at += bytesRead
    if (!sink.write(buffer.subarray(0, bytesRead))) await drained(sink)
  }
}

/**
 * The entries of `dir` into `tar`, named below `prefix`, depth first; no deeper than an archive
 * may be unpacked (each level holds a directory open while a slow reader takes its time).
 */
async function walk (dir: Dir, prefix: string, tar: tarStream.Pack, depth = 1): Promise<void> {
  if (depth > MAX_DEPTH) throw new PathConflict(`${dir.absolute}: more than ${MAX_DEPTH} levels deep`)
  for (const name of (await dir.entries()).sort()) {
    const s = await dir.lstat(name)
    if (s === null) continue // gone meanwhile
    const header = { name: prefix + name, mode: Number(s.mode & 0o777n), mtime: new Date(Number(s.mtimeMs)) }
    if (s.isDirectory()) {
      const sub = await dir.openChild(name).catch(() => null) // replaced meanwhile: left out
      if (sub === null) continue
      try {
        await add(tar, { ...header, name: header.name + '/', type: 'directory' })
        await walk(sub, header.name + '/', tar, depth + 1)
      } finally {
        await sub.close()
      }
    } else if (s.isSymbolicLink()) {
      const linkname = await dir.readlink(name).catch(() => null)
      if (linkname !== null) await add(tar, { ...header, type: 'symlink', linkname })
    } else if (s.isFile()) {
      const file = await dir.openFile(name).catch(() => null) // replaced by something else meanwhile: left out
      if (file === null) continue
      try {
        const size = Number(file.stat.size)
        await add(tar, { ...header, type: 'file', size }, async sink => { await copy(file.fh, size, sink, `${dir.absolute}/${name}`) })
      } finally {
        await file.fh.close()
      }
    }
    // Devices, FIFOs, sockets: left out.
  }
}

/**
 * The directory at `place` as a gzipped tar stream (streamed: never the whole archive in memory),
 * entry names relative to it; files, directories, and symlinks as link entries (their target text,
 * never followed); other kinds skipped. Reading goes through Dir (no-follow). A failure midway
 * destroys the stream with the error. Throws PathNotFound / PathConflict before streaming if the
 * place is missing / not a directory (so the route can answer 404/409 before sending headers).
 */
export async function pack (place: Place): Promise<Readable> {
  const root = await Dir.open(place)
  const tar = tarStream.pack()
  const gzip = createGzip()
  tar.pipe(gzip)
  tar.on('error', (err: Error) => { gzip.destroy(err) })
  // The reader gone (or the stream failed): the walk stops at its next entry or write.
  gzip.on('close', () => { if (!tar.destroyed) tar.destroy(new Error('the archive stream was closed')) })
  walk(root, '', tar).then(() => { tar.finalize() }, (err: Error) => { tar.destroy(err) }).finally(() => { void root.close() })
  return gzip
}
