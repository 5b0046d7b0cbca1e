import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { Type } from '@sinclair/typebox'
import { basename } from 'node:path'
import { PassThrough, type Readable } from 'node:stream'
import { DomainError, InvalidRequest, withProblem } from '../src/domain/errors.js'
import { problemResponses } from '../src/schemas/problem.js'
import { kindOf, pack, unpack, type ArchiveKind } from '../src/workspace/archives.js'
import { list, matches, openForRead, remove, write } from '../src/workspace/files.js'
import { placeOf, type Place } from '../src/workspace/safe-fs.js'

const security: Array<Record<string, string[]>> = [{ ApiKeyAuth: [] }, { BearerAuth: [] }]
const PathQuery = Type.Object({
  path: Type.String({ minLength: 1, maxLength: 4096, description: 'A path in the key\'s workspace: absolute, or relative to its default working directory (as `working_directory`).' })
})
const EntrySchema = Type.Object({
  name: Type.String(),
  type: Type.Union([Type.Literal('file'), Type.Literal('dir'), Type.Literal('link')], { description: 'A link is shown, never followed.' }),
  size: Type.Integer(),
  mtime: Type.String({ format: 'date-time' })
})
const ListingSchema = Type.Object({
  path: Type.String({ description: 'The directory\'s absolute path.' }),
  entries: Type.Array(EntrySchema),
  truncated: Type.Boolean({ description: 'More entries than one listing holds (10,000).' })
})
const WrittenSchema = Type.Object({ path: Type.String(), size: Type.Integer(), etag: Type.String() })
const UnpackedSchema = Type.Object({ path: Type.String(), files: Type.Integer(), bytes: Type.Integer() })
const Binary = Type.Unsafe<string>({ type: 'string', format: 'binary' })
const notFound = { ...problemResponses[404], description: 'No such file or directory (`path_not_found`).' }
const forbidden = { ...problemResponses[403], description: 'Outside the key\'s workspace, or through a symbolic link (`path_forbidden`).' }
const conflict = { ...problemResponses[409], description: 'Not what the route needs: a directory for a file, or one that is not empty (`path_conflict`).' }

/** A single byte range of a file of `size` bytes (`undefined`: the whole file; `null`: unsatisfiable). */
export function rangeOf (header: string | undefined, size: number): { start: number, end: number } | undefined | null {
  if (header === undefined) return undefined
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (m !== null && size === 0) return null // No byte of an empty file can be asked for.
  if (m === null || (m[1] === '' && m[2] === '')) return undefined // Several ranges, or another unit: the whole file.
  if (m[1] === '') {
    const suffix = Number(m[2])
    if (suffix === 0) return null
    return { start: Math.max(0, size - suffix), end: size - 1 }
  }
  const start = Number(m[1])
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1)
  if (start >= size || end < start) return null
  return { start, end }
}

/**
 * The workspace API: put files where a key's runs work, and take back what they made. Paths are
 * checked as `working_directory` is, at the moment of use, and never through a link (`safe-fs`).
 * A key reaches its own workspace (with agent identities, its own work area; files it makes are
 * that identity's), admin every root. Bodies are streamed to disk and from it, never held whole.
 */
const files: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, engine } = fastify
  const placeFor = (request: FastifyRequest, path: string): Place =>
    placeOf(engine.workspaceOf(request.apiKeyName ?? null, fastify.isAdmin(request)), path)

  // Uploads are the request's own stream, read by the route (never buffered by a parser); the
  // body the schema sees is a placeholder.
  fastify.removeAllContentTypeParsers()
  fastify.addContentTypeParser('*', (_request, _payload, done) => { done(null, '') })
  const tooLarge = (request: FastifyRequest, max: number): void => {
    const length = Number(request.headers['content-length'] ?? 0)
    if (length > max) throw new DomainError('upload_too_large', `the upload is ${length} bytes; at most ${max} (MAX_UPLOAD_BYTES)`)
  }

  fastify.get('/files', {
    config: { scope: 'files:read' },
    schema: {
      tags: ['files'],
      summary: 'List a directory',
      description: 'Its entries by name: files, directories and links (shown, never followed). Devices, sockets and FIFOs are left out.',
      operationId: 'listFiles',
      security,
      querystring: PathQuery,
      response: { 200: ListingSchema, 400: problemResponses[400], 401: problemResponses[401], 403: forbidden, 404: notFound, 409: conflict }
    }
  }, async (request) => await list(placeFor(request, request.query.path)))

  fastify.get('/files/content', {
    config: { scope: 'files:read' },
    schema: {
      tags: ['files'],
      summary: 'Download a file',
      description: 'The file\'s bytes (`application/octet-stream`) with its `ETag`; `If-None-Match` answers 304, `Range: bytes=a-b` a 206 with that part.',
      operationId: 'getFileContent',
      security,
      querystring: PathQuery,
      response: {
        200: { description: 'The file.', content: { 'application/octet-stream': { schema: Binary } } },
        206: { description: 'The range asked for.', content: { 'application/octet-stream': { schema: Binary } } },
        304: { description: 'Not modified since the `ETag` named in `If-None-Match`.', type: 'null' },
        400: problemResponses[400],
        401: problemResponses[401],
        403: forbidden,
        404: notFound,
        409: conflict,
        416: problemResponses[416]
      }
    }
  }, async (request, reply) => {
    const file = await openForRead(placeFor(request, request.query.path))
    let handedOver = false
    try {
      reply.header('etag', file.etag).header('last-modified', file.mtime.toUTCString()).header('accept-ranges', 'bytes')
      const ifNoneMatch = request.headers['if-none-match']
      if (ifNoneMatch !== undefined && matches(ifNoneMatch, file.etag)) return await reply.code(304).send()
      const range = rangeOf(request.headers.range, file.size)
      if (range === null) {
        reply.header('content-range', `bytes */${file.size}`)
        throw new DomainError('range_not_satisfiable', `the file is ${file.size} bytes; ${request.headers.range ?? ''} lies beyond it`)
      }
      reply.type('application/octet-stream')
      reply.header('content-disposition', `attachment; filename*=UTF-8''${encodeURIComponent(basename(request.query.path))}`)
      if (range !== undefined) {
        reply.code(206).header('content-range', `bytes ${range.start}-${range.end}/${file.size}`).header('content-length', range.end - range.start + 1)
      } else reply.header('content-length', file.size)
      // Exactly the bytes the headers announced, however the file grows meanwhile (anything more
      // would be read by the client as the start of the next response).
      const { start, end } = range ?? { start: 0, end: file.size - 1 }
      if (end < start) {
        await file.fh.close()
        handedOver = true
        return await reply.send(Buffer.alloc(0))
      }
      const stream = file.fh.createReadStream({ start, end })
      handedOver = true
      return await reply.send(stream)
    } finally {
      if (!handedOver) await file.fh.close()
    }
  })

  fastify.put('/files/content', {
    config: { scope: 'files:write' },
    schema: {
      tags: ['files'],
      summary: 'Upload a file',
      description: 'The raw body becomes the file (up to `MAX_UPLOAD_BYTES`), streamed to disk beside it and switched in whole; parent directories are made. With agent identities the file is the key\'s identity\'s. `If-Match: <etag>` writes only over that version (412 otherwise); `If-None-Match: *` only where no file is.',
      operationId: 'putFileContent',
      security,
      consumes: ['application/octet-stream'],
      querystring: PathQuery,
      body: Binary,
      response: {
        200: { ...WrittenSchema, description: 'Replaced.' },
        201: { ...WrittenSchema, description: 'Created.' },
        400: problemResponses[400],
        401: problemResponses[401],
        403: forbidden,
        404: notFound,
        409: conflict,
        412: problemResponses[412],
        413: problemResponses[413]
      }
    }
  }, async (request, reply) => {
    tooLarge(request, config.maxUploadBytes)
    const place = placeFor(request, request.query.path)
    const h = request.headers
    const written = await write(place, request.raw, { maxBytes: config.maxUploadBytes, ifMatch: h['if-match'], ifNoneMatch: h['if-none-match'] })
    return await reply.code(written.created ? 201 : 200).header('etag', written.etag).send({ path: written.path, size: written.size, etag: written.etag })
  })

  fastify.delete('/files', {
    config: { scope: 'files:write' },
    schema: {
      tags: ['files'],
      summary: 'Delete a file or an empty directory',
      description: 'A link is removed itself, never what it points to.',
      operationId: 'deleteFile',
      security,
      querystring: PathQuery,
      response: { 204: { description: 'Deleted.', type: 'null' }, 400: problemResponses[400], 401: problemResponses[401], 403: forbidden, 404: notFound, 409: conflict }
    }
  }, async (request, reply) => {
    const place = placeFor(request, request.query.path)
    if (place.parts.length === 0) throw new DomainError('path_forbidden', `${place.absolute} is a root of the workspace: it is not deleted`)
    await remove(place)
    return await reply.code(204).send()
  })

  fastify.post('/files/archive', {
    config: { scope: 'files:write' },
    schema: {
      tags: ['files'],
      summary: 'Upload an archive and unpack it',
      description: 'A `.tar.gz` or `.zip` body unpacked into the directory (made if missing). All or nothing: an entry outside it (`../`, absolute), a link, a device, more than `MAX_ARCHIVE_ENTRIES` entries or `MAX_UPLOAD_BYTES` unpacked is a 400 with nothing written.',
      operationId: 'unpackArchive',
      security,
      consumes: ['application/gzip', 'application/zip', 'application/octet-stream'],
      querystring: PathQuery,
      body: Binary,
      response: { 200: UnpackedSchema, 400: problemResponses[400], 401: problemResponses[401], 403: forbidden, 409: conflict, 413: problemResponses[413] }
    }
  }, async (request) => {
    tooLarge(request, config.maxUploadBytes)
    const place = placeFor(request, request.query.path)
    const { kind, body } = await sniff(request)
    return await unpack(place, body, kind, { maxBytes: config.maxUploadBytes, maxEntries: config.maxArchiveEntries })
  })

  fastify.get('/files/archive', {
    config: { scope: 'files:read' },
    schema: {
      tags: ['files'],
      summary: 'Download a directory as .tar.gz',
      description: 'Streamed as it is read: files, directories, and links as links (never followed).',
      operationId: 'getArchive',
      security,
      querystring: PathQuery,
      response: {
        200: { description: 'A gzipped tar of the directory.', content: { 'application/gzip': { schema: Binary } } },
        400: problemResponses[400],
        401: problemResponses[401],
        403: forbidden,
        404: notFound,
        409: conflict
      }
    }
  }, async (request, reply) => {
    const place = placeFor(request, request.query.path)
    const stream = await pack(place)
    const name = (place.parts.at(-1) ?? 'workspace') + '.tar.gz'
    return await reply.type('application/gzip').header('content-disposition', `attachment; filename*=UTF-8''${encodeURIComponent(name)}`).send(stream)
  })
}

/** The kind of an uploaded archive, from its first bytes, and the body with them put back. */
async function sniff (request: FastifyRequest): Promise<{ kind: ArchiveKind, body: Readable }> {
  const raw = request.raw
  const head = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = []
    let n = 0
    const onData = (c: Buffer): void => {
      chunks.push(c)
      n += c.length
      if (n >= 4) done()
    }
    const done = (): void => {
      raw.off('data', onData)
      raw.off('end', done)
      raw.off('error', reject)
      raw.pause()
      resolve(Buffer.concat(chunks))
    }
    raw.on('data', onData)
    raw.once('end', done)
    raw.once('error', reject)
  })
  const kind = kindOf(head)
  if (kind === undefined) throw withProblem(new InvalidRequest('the body is neither a .tar.gz nor a .zip archive'), { problem: { errors: [{ path: '/body', message: 'not a .tar.gz or .zip archive' }] } })
  const body = new PassThrough()
  body.write(head)
  raw.pipe(body)
  raw.resume()
  return { kind, body }
}

export default files
