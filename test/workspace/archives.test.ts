import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { readdirSync } from 'node:fs'
import { chown, lstat, mkdir, readFile, readdir, readlink, symlink, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { crc32, deflateRawSync, gunzipSync, gzipSync } from 'node:zlib'
import { test, type Test } from 'tap'
import tarStream from 'tar-stream'
import { kindOf, pack, unpack, type UnpackLimits } from '../../src/workspace/archives.js'
import { placeOf, type Workspace } from '../../src/workspace/safe-fs.js'

const limits: UnpackLimits = { maxBytes: 1024 * 1024, maxEntries: 100 }

// Archives, built here byte by byte where a tool would refuse to make a hostile one.

type TarItem = Partial<tarStream.Header> & { name: string, body?: string | Buffer }

async function tgz (items: TarItem[]): Promise<Buffer> {
  const p = tarStream.pack()
  for (const { body, ...header } of items) {
    if (body !== undefined) p.entry(header, body)
    else p.entry(header)
  }
  p.finalize()
  return gzipSync(await collect(p as AsyncIterable<unknown>))
}

async function collect (stream: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

interface ZipItem { name: string | Buffer, data?: string | Buffer, deflate?: boolean, mode?: number, flags?: number }

/** A zip, as made on Unix: `mode` (type and permissions) in the high 16 bits of the external attributes. */
function zip (items: ZipItem[]): Buffer {
  const parts: Buffer[] = []
  const central: Buffer[] = []
  let offset = 0
  for (const item of items) {
    const name = Buffer.from(item.name)
    const raw = Buffer.from(item.data ?? '')
    const data = item.deflate === true ? deflateRawSync(raw) : raw
    const method = item.deflate === true ? 8 : 0
    const local = Buffer.alloc(30)
    local.writeUInt32LE(0x04034b50, 0)
    local.writeUInt16LE(20, 4)
    local.writeUInt16LE(item.flags ?? 0, 6)
    local.writeUInt16LE(method, 8)
    local.writeUInt32LE(crc32(raw), 14)
    local.writeUInt32LE(data.length, 18)
    local.writeUInt32LE(raw.length, 22)
    local.writeUInt16LE(name.length, 26)
    const header = Buffer.alloc(46)
    header.writeUInt32LE(0x02014b50, 0)
    header.writeUInt16LE(0x0314, 4) // made by: Unix, version 2.0
    header.writeUInt16LE(20, 6)
    header.writeUInt16LE(item.flags ?? 0, 8)
    header.writeUInt16LE(method, 10)
    header.writeUInt32LE(crc32(raw), 16)
    header.writeUInt32LE(data.length, 20)
    header.writeUInt32LE(raw.length, 24)
    header.writeUInt16LE(name.length, 28)
    header.writeUInt32LE(((item.mode ?? 0o100644) << 16) >>> 0, 38)
    header.writeUInt32LE(offset, 42)
    parts.push(local, name, data)
    central.push(header, name)
    offset += local.length + name.length + data.length
  }
  const directory = Buffer.concat(central)
  const end = Buffer.alloc(22)
  end.writeUInt32LE(0x06054b50, 0)
  end.writeUInt16LE(items.length, 8)
  end.writeUInt16LE(items.length, 10)
  end.writeUInt32LE(directory.length, 12)
  end.writeUInt32LE(offset, 16)
  return Buffer.concat([...parts, directory, end])
}

/** What a user would see of a tree: each entry, a file's mode and a digest of its content, a link's target. */
async function listing (dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = []
  for (const name of (await readdir(dir)).sort()) {
    const path = join(dir, name)
    const s = await lstat(path)
    if (s.isDirectory()) out.push(`${prefix}${name}/`, ...await listing(path, `${prefix}${name}/`))
    else if (s.isSymbolicLink()) out.push(`${prefix}${name} -> ${await readlink(path)}`)
    else out.push(`${prefix}${name} ${(s.mode & 0o7777).toString(8)} ${createHash('sha256').update(await readFile(path)).digest('hex').slice(0, 12)}`)
  }
  return out
}

/** A workspace under a test's own directory, with a sibling directory outside it. */
async function workspace (t: Test): Promise<{ root: string, outside: string, ws: Workspace }> {
  const dir = t.testdir()
  const root = join(dir, 'ws')
  const outside = join(dir, 'outside')
  await mkdir(root)
  await mkdir(outside)
  return { root, outside, ws: { roots: [root], base: root } }
}

const body = (buf: Buffer): Readable => Readable.from([buf])
const openFds = (): number => readdirSync('/proc/self/fd').length

test('kindOf sniffs gzip and zip (an empty zip too) from the first bytes', async t => {
  t.equal(kindOf(gzipSync('x')), 'tar.gz')
  t.equal(kindOf(zip([{ name: 'a', data: 'a' }])), 'zip')
  t.equal(kindOf(zip([])), 'zip', 'an empty zip is its end record alone')
  t.equal(kindOf(Buffer.from('hello')), undefined)
  t.equal(kindOf(Buffer.alloc(0)), undefined)
})

test('a tar.gz unpacks (nested directories, an executable), packs, and unpacks again the same', async t => {
  const { root, ws } = await workspace(t)
  const big = randomBytes(3 * 1024 * 1024) // several times the tar stream's buffers: backpressure at work
  const archive = await tgz([
    { name: 'a/', type: 'directory' },
    { name: 'a/b/c.txt', body: 'deep' },
    { name: './run.sh', body: '#!/bin/sh\necho hi\n', mode: 0o755 },
    { name: 'a/setuid', body: 'x', mode: 0o4755 },
    { name: 'a/private', body: 'y', mode: 0o600 },
    { name: 'empty', body: '' },
    { name: 'empty-dir/', type: 'directory' },
    { name: 'big.bin', body: big }
  ])
  const result = await unpack(placeOf(ws, 'src'), body(archive), 'tar.gz', { maxBytes: 10 * 1024 * 1024, maxEntries: 100 })
  t.same(result, { path: join(root, 'src'), files: 6, bytes: 4 + 18 + 1 + 1 + 0 + big.length })
  t.equal(await readFile(join(root, 'src/a/b/c.txt'), 'utf8'), 'deep')
  t.same(await readFile(join(root, 'src/big.bin')), big)
  t.equal((await lstat(join(root, 'src/run.sh'))).mode & 0o7777, 0o755, 'the executable stays executable')
  t.equal((await lstat(join(root, 'src/a/setuid'))).mode & 0o7777, 0o755, 'never setuid')
  t.equal((await lstat(join(root, 'src/a/private'))).mode & 0o7777, 0o644, 'only the owner-executable bit is kept')
  t.ok((await lstat(join(root, 'src/empty-dir'))).isDirectory())
  t.same((await readdir(join(root, 'src'))).sort(), ['a', 'big.bin', 'empty', 'empty-dir', 'run.sh'], 'no staging directory left')

  const packed = await collect(await pack(placeOf(ws, 'src')))
  t.equal(kindOf(packed), 'tar.gz')
  await unpack(placeOf(ws, 'copy'), body(packed), 'tar.gz', { maxBytes: 10 * 1024 * 1024, maxEntries: 100 })
  t.same(await listing(join(root, 'copy')), await listing(join(root, 'src')), 'the copy is the original')
})

test('a zip unpacks: stored and deflated files, directories, the executable bit', async t => {
  const { root, ws } = await workspace(t)
  const archive = zip([
    { name: 'docs/', mode: 0o40755 },
    { name: 'docs/readme.md', data: 'hello '.repeat(100), deflate: true },
    { name: 'bin/tool', data: '#!/bin/sh\n', mode: 0o100755 },
    { name: 'win.txt', data: 'from windows', mode: 0 },
    { name: 'deep/er/file', data: 'x', deflate: true }
  ])
  const result = await unpack(placeOf(ws, 'dest'), body(archive), 'zip', limits)
  t.same(result, { path: join(root, 'dest'), files: 4, bytes: 600 + 10 + 12 + 1 })
  t.same(await listing(join(root, 'dest')), [
    'bin/',
    `bin/tool 755 ${createHash('sha256').update('#!/bin/sh\n').digest('hex').slice(0, 12)}`,
    'deep/',
    'deep/er/',
    `deep/er/file 644 ${createHash('sha256').update('x').digest('hex').slice(0, 12)}`,
    'docs/',
    `docs/readme.md 644 ${createHash('sha256').update('hello '.repeat(100)).digest('hex').slice(0, 12)}`,
    `win.txt 644 ${createHash('sha256').update('from windows').digest('hex').slice(0, 12)}`
  ], 'all there, and no staging directory or spooled upload left')
  t.same(await unpack(placeOf(ws, 'empty'), body(zip([])), 'zip', limits), { path: join(root, 'empty'), files: 0, bytes: 0 }, 'an empty zip is nothing to do')
})

interface Hostile { title: string, kind: 'tar.gz' | 'zip', archive: () => Promise<Buffer> | Buffer, message: RegExp, limits?: UnpackLimits }

const good = { name: 'ok.txt', body: 'ok' } // before each hostile entry: it must not land either

const hostile: Hostile[] = [
  { title: 'a .. name', kind: 'tar.gz', archive: async () => await tgz([good, { name: '../evil', body: 'x' }]), message: /entry "\.\.\/evil": .*\.\. component/ },
  { title: 'a .. inside a name', kind: 'tar.gz', archive: async () => await tgz([good, { name: 'a/../../evil', body: 'x' }]), message: /"a\/\.\.\/\.\.\/evil"/ },
  { title: 'an absolute name', kind: 'tar.gz', archive: async () => await tgz([good, { name: '/abs', body: 'x' }]), message: /entry "\/abs": absolute names are refused/ },
  { title: 'a symlink', kind: 'tar.gz', archive: async () => await tgz([good, { name: 'link', type: 'symlink', linkname: '/etc' }]), message: /entry "link": a symbolic link/ },
  { title: 'a hard link', kind: 'tar.gz', archive: async () => await tgz([good, { name: 'hard', type: 'link', linkname: 'ok.txt' }]), message: /entry "hard": a hard link/ },
  { title: 'a device', kind: 'tar.gz', archive: async () => await tgz([good, { name: 'null', type: 'character-device', devmajor: 1, devminor: 3 }]), message: /entry "null": a device/ },
  { title: 'a FIFO', kind: 'tar.gz', archive: async () => await tgz([good, { name: 'pipe', type: 'fifo' }]), message: /entry "pipe": a FIFO/ },
  { title: 'too many entries', kind: 'tar.gz', archive: async () => await tgz(Array.from({ length: 6 }, (_, i) => ({ name: `f${i}`, body: 'x' }))), limits: { maxBytes: 1000, maxEntries: 5 }, message: /entry "f5": the archive has more than 5 entries/ },
  { title: 'too many bytes', kind: 'tar.gz', archive: async () => await tgz([good, { name: 'zeros', body: Buffer.alloc(10 * 1024 * 1024) }]), message: /entry "zeros": the archive unpacks to more than 1048576 bytes/ },
  { title: 'a file and a directory of one name', kind: 'tar.gz', archive: async () => await tgz([good, { name: 'x', body: 'x' }, { name: 'x/y', body: 'y' }]), message: /"x\/y": x is both a file and a directory/ },
  { title: 'a corrupt gzip', kind: 'tar.gz', archive: () => Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0]), randomBytes(200)]), message: /the tar\.gz archive is corrupt/ },
  { title: 'a truncated gzip', kind: 'tar.gz', archive: async () => (await tgz([good, { name: 'r', body: randomBytes(20000) }])).subarray(0, 10000), message: /the tar\.gz archive is corrupt/ },
  { title: 'a gzip of something not a tar', kind: 'tar.gz', archive: () => gzipSync(randomBytes(2048)), message: /the tar\.gz archive is corrupt: Invalid tar header/ },
  { title: 'a zip .. name', kind: 'zip', archive: () => zip([{ name: 'ok.txt', data: 'ok' }, { name: '../evil', data: 'x' }]), message: /entry "\.\.\/evil"/ },
  { title: 'a zip .. name with backslashes', kind: 'zip', archive: () => zip([{ name: 'ok.txt', data: 'ok' }, { name: '..\\evil', data: 'x' }]), message: /entry "\.\.\/evil"/ },
  { title: 'a zip absolute name', kind: 'zip', archive: () => zip([{ name: 'ok.txt', data: 'ok' }, { name: '/abs', data: 'x' }]), message: /entry "\/abs": absolute/ },
  { title: 'a zip name with NUL', kind: 'zip', archive: () => zip([{ name: 'ok.txt', data: 'ok' }, { name: Buffer.from('a\0b'), data: 'x' }]), message: /NUL byte/ },
  { title: 'a zip symlink', kind: 'zip', archive: () => zip([{ name: 'ok.txt', data: 'ok' }, { name: 'link', data: '/etc/passwd', mode: 0o120777 }]), message: /entry "link": a symbolic link/ },
  { title: 'a zip FIFO', kind: 'zip', archive: () => zip([{ name: 'ok.txt', data: 'ok' }, { name: 'pipe', mode: 0o10644 }]), message: /entry "pipe": a device, FIFO or socket/ },
  { title: 'a zip encrypted entry', kind: 'zip', archive: () => zip([{ name: 'ok.txt', data: 'ok' }, { name: 'secret', data: 'x', deflate: true, flags: 1 }]), message: /entry "secret": encrypted/ },
  { title: 'a zip bomb', kind: 'zip', archive: () => zip([{ name: 'ok.txt', data: 'ok' }, { name: 'bomb', data: Buffer.alloc(10 * 1024 * 1024), deflate: true }]), message: /entry "bomb": the archive unpacks to more than 1048576 bytes/ },
  { title: 'a zip with too many entries', kind: 'zip', archive: () => zip(Array.from({ length: 6 }, (_, i) => ({ name: `f${i}`, data: 'x' }))), limits: { maxBytes: 1000, maxEntries: 5 }, message: /6 entries, more than 5/ },
  { title: 'a zip upload larger than allowed', kind: 'zip', archive: () => zip([{ name: 'r', data: randomBytes(64 * 1024) }]), limits: { maxBytes: 1000, maxEntries: 1 }, message: /the archive is larger than/ },
  { title: 'a corrupt zip', kind: 'zip', archive: () => Buffer.concat([Buffer.from('PK\x03\x04'), randomBytes(300)]), message: /the zip archive is corrupt/ }
]

for (const h of hostile) {
  test(`refused, the target as it was: ${h.title}`, async t => {
    const { root, ws } = await workspace(t)
    await mkdir(join(root, 'dest/sub'), { recursive: true })
    await writeFile(join(root, 'dest/keep.txt'), 'kept')
    await writeFile(join(root, 'dest/sub/old.txt'), 'old')
    const parent = join(root, '..')
    const before = await listing(parent)
    const archive = await h.archive()
    const fds = openFds()
    await t.rejects(unpack(placeOf(ws, 'dest'), body(archive), h.kind, h.limits ?? limits), { code: 'invalid_request', message: h.message })
    t.equal(openFds(), fds, 'every file and directory opened is closed')
    t.same(await listing(parent), before, 'nothing written, nothing left (no staging directory), here or around')
  })
}

test('a symbolic link planted in the target is never followed: nothing lands outside', async t => {
  const { root, outside, ws } = await workspace(t)
  await mkdir(join(root, 'dest'))
  await symlink(outside, join(root, 'dest/sub'))
  const before = await listing(join(root, 'dest'))
  await t.rejects(unpack(placeOf(ws, 'dest'), body(await tgz([{ name: 'sub/x', body: 'x' }])), 'tar.gz', limits), { code: 'path_forbidden' })
  await t.rejects(unpack(placeOf(ws, 'dest'), body(zip([{ name: 'sub/x', data: 'x' }])), 'zip', limits), { code: 'path_forbidden' })
  await t.rejects(unpack(placeOf(ws, 'dest'), body(await tgz([{ name: 'sub', body: 'x' }])), 'tar.gz', limits), { code: 'path_forbidden' }, 'nor replaced by a file')
  await t.rejects(unpack(placeOf(ws, 'dest/sub'), body(await tgz([{ name: 'x', body: 'x' }])), 'tar.gz', limits), 'a link as the target itself is refused too')
  t.same(await readdir(outside), [], 'outside stays empty')
  t.same(await listing(join(root, 'dest')), before, 'and the target as it was')
})

test('a file where the archive has a directory is a conflict, and nothing is moved; a file is replaced', async t => {
  const { root, ws } = await workspace(t)
  await mkdir(join(root, 'dest'))
  await writeFile(join(root, 'dest/a.txt'), 'old')
  await writeFile(join(root, 'dest/d'), 'a file')
  const before = await listing(join(root, 'dest'))
  await t.rejects(unpack(placeOf(ws, 'dest'), body(await tgz([{ name: 'a.txt', body: 'new' }, { name: 'd/x', body: 'x' }])), 'tar.gz', limits), { code: 'path_conflict' })
  t.same(await listing(join(root, 'dest')), before, 'a.txt not replaced either: all or nothing')
  await mkdir(join(root, 'dest/dir'))
  await t.rejects(unpack(placeOf(ws, 'dest'), body(await tgz([{ name: 'dir', body: 'x' }])), 'tar.gz', limits), { code: 'path_conflict' }, 'a directory where the archive has a file')
  t.same(await unpack(placeOf(ws, 'dest'), body(await tgz([{ name: 'a.txt', body: 'new' }, { name: 'dir/in', body: 'in' }])), 'tar.gz', limits), { path: join(root, 'dest'), files: 2, bytes: 5 })
  t.equal(await readFile(join(root, 'dest/a.txt'), 'utf8'), 'new', 'the existing file replaced')
  t.equal(await readFile(join(root, 'dest/dir/in'), 'utf8'), 'in', 'into the existing directory')
  t.equal(await readFile(join(root, 'dest/d'), 'utf8'), 'a file', 'the rest untouched')
})

test('a missing target is made with its parents, and unmade when the archive is refused', async t => {
  const { root, ws } = await workspace(t)
  await t.rejects(unpack(placeOf(ws, 'gone/deeper'), body(await tgz([good, { name: '../x', body: 'x' }])), 'tar.gz', limits), { code: 'invalid_request' })
  t.same(await readdir(root), [], 'no directory left behind')
  await unpack(placeOf(ws, 'new/deeper'), body(await tgz([good])), 'tar.gz', limits)
  t.equal(await readFile(join(root, 'new/deeper/ok.txt'), 'utf8'), 'ok')
})

test('pack emits a symbolic link as a link entry, never following it; other kinds are left out', async t => {
  const { root, outside, ws } = await workspace(t)
  await writeFile(join(outside, 'secret.txt'), 'secret')
  await mkdir(join(root, 'dir/sub'), { recursive: true })
  await writeFile(join(root, 'dir/sub/file.txt'), 'content')
  await symlink(outside, join(root, 'dir/escape'))
  await symlink('../../etc/passwd', join(root, 'dir/sub/relative'))
  execFileSync('mkfifo', [join(root, 'dir/fifo')])
  const entries: Array<{ name: string, type: string, linkname: string | null, content: string }> = []
  const extract = tarStream.extract()
  extract.end(gunzipSync(await collect(await pack(placeOf(ws, 'dir')))))
  for await (const entry of extract) {
    const { name, type, linkname } = entry.header
    entries.push({ name, type, linkname: linkname ?? null, content: (await collect(entry)).toString() })
  }
  t.same(entries.map(e => [e.name, e.type, e.linkname, e.content]), [
    ['escape', 'symlink', outside, ''],
    ['sub/', 'directory', null, ''],
    ['sub/file.txt', 'file', null, 'content'],
    ['sub/relative', 'symlink', '../../etc/passwd', '']
  ], 'the links as links; nothing of what they point to; no FIFO')
  t.notOk(entries.some(e => e.content.includes('secret')))
})

test('pack refuses a missing place and a file before streaming', async t => {
  const { root, ws } = await workspace(t)
  await writeFile(join(root, 'file'), 'x')
  await t.rejects(pack(placeOf(ws, 'missing')), { code: 'path_not_found' })
  await t.rejects(pack(placeOf(ws, 'file')), { code: 'path_conflict' })
})

test('a reader that goes away midway stops the packing (no hang, no stray error)', async t => {
  const { root, ws } = await workspace(t)
  await mkdir(join(root, 'dir'))
  for (let i = 0; i < 5; i++) await writeFile(join(root, `dir/f${i}`), randomBytes(2 * 1024 * 1024))
  const fds = openFds()
  const stream = await pack(placeOf(ws, 'dir'))
  await new Promise<void>(resolve => stream.once('data', () => { resolve() }))
  stream.destroy()
  await new Promise(resolve => setTimeout(resolve, 200))
  t.ok(stream.destroyed)
  t.equal(openFds(), fds, 'the walk stopped, every file and directory it opened closed')
})

test('a failure midway (a file shrinking as it is read) destroys the stream with the error', async t => {
  const { root, ws } = await workspace(t)
  await mkdir(join(root, 'dir'))
  await writeFile(join(root, 'dir/big'), randomBytes(20 * 1024 * 1024))
  const stream = await pack(placeOf(ws, 'dir'))
  stream.once('data', () => { void truncate(join(root, 'dir/big'), 0) })
  await t.rejects(collect(stream), { message: /dir\/big shrank while it was packed/ })
})

test('run as root, what is unpacked is the owner\'s of the directory it lands in', { skip: process.getuid?.() !== 0 && 'not root' }, async t => {
  const { root, ws } = await workspace(t)
  await mkdir(join(root, 'dest/theirs'), { recursive: true })
  await chown(join(root, 'dest'), 1234, 1234)
  await chown(join(root, 'dest/theirs'), 4321, 4321)
  await unpack(placeOf(ws, 'dest'), body(await tgz([{ name: 'new/a', body: 'a' }, { name: 'theirs/b', body: 'b' }, { name: 'c', body: 'c' }])), 'tar.gz', limits)
  const owner = async (path: string): Promise<number[]> => { const s = await lstat(join(root, 'dest', path)); return [s.uid, s.gid] }
  t.same(await owner('new'), [1234, 1234], 'a directory made')
  t.same(await owner('new/a'), [1234, 1234])
  t.same(await owner('c'), [1234, 1234])
  t.same(await owner('theirs/b'), [4321, 4321], 'a file moved into a directory of another owner is that owner\'s')
})
