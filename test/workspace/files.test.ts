import { test } from 'tap'
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createGzip, gunzipSync } from 'node:zlib'
import { pack as tarPack } from 'tar-stream'
import { build, fakeModel, keysFile, listen, openToAgents, readSse, sandbox, startServer, testEnv, toolResults } from '../helper.js'

/**
 * The workspace API through a real server and the real CLI: files in (one at a time, or an
 * archive), a run that reads them and changes its directory, its changes as a list and a diff,
 * their revert; and what must be refused (outside the workspace, through a link, another key's).
 */

const KEYS = { alice: 'cca_alice-0123456789abcdefghijklmnopqrstuv', bob: 'cca_bob-0123456789abcdefghijklmnopqrstuvwxy', reader: 'cca_reader-0123456789abcdefghijklmnopqrstu' }

async function server (t: Parameters<typeof build>[0], env: Record<string, string> = {}) {
  const box = sandbox(t)
  const keys = keysFile(box, {
    alice: { key: KEYS.alice, scopes: ['runs:write', 'runs:read'] },
    bob: { key: KEYS.bob, scopes: ['runs:write', 'runs:read'] },
    reader: { key: KEYS.reader, scopes: ['files:read'] }
  })
  const built = await build(t, { box, env: { API_KEYS_FILE: keys, ...env } })
  const base = await listen(built.app)
  const call = async (key: string, method: string, path: string, init: { body?: BodyInit, headers?: Record<string, string> } = {}): Promise<Response> =>
    await fetch(`${base}${path}`, { method, headers: { 'x-api-key': key, ...init.headers }, ...(init.body !== undefined ? { body: init.body, duplex: 'half' } : {}) } as RequestInit)
  const execute = async (key: string, body: object): Promise<any> =>
    await (await call(key, 'POST', '/api/execute', { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } })).json()
  return { ...built, base, call, execute }
}

const q = (p: string): string => encodeURIComponent(p)

test('files in: upload, list, download with ETag and ranges; a run reads what was uploaded', async t => {
  const { box, model, call, execute } = await server(t)
  const put = await call(KEYS.alice, 'PUT', `/api/files/content?path=${q('in/data.txt')}`, { body: 'hello from the client\n' })
  t.equal(put.status, 201)
  const written = await put.json() as any
  t.same({ path: written.path, size: written.size }, { path: join(box.work, 'in', 'data.txt'), size: 22 }, 'relative to the default working directory; the absolute path answered')
  t.equal(readFileSync(join(box.work, 'in', 'data.txt'), 'utf8'), 'hello from the client\n', 'the file is on disk')

  const stale = written.etag as string
  const replaced = await call(KEYS.alice, 'PUT', `/api/files/content?path=${q('in/data.txt')}`, { body: 'version two\n', headers: { 'if-match': stale } })
  t.equal(replaced.status, 200, 'If-Match with the current ETag writes')
  const conflict = await call(KEYS.alice, 'PUT', `/api/files/content?path=${q('in/data.txt')}`, { body: 'lost update\n', headers: { 'if-match': stale } })
  t.equal(conflict.status, 412, 'a stale ETag is refused')
  t.equal(readFileSync(join(box.work, 'in', 'data.txt'), 'utf8'), 'version two\n', 'and changed nothing')

  const listing = await (await call(KEYS.alice, 'GET', '/api/files?path=in')).json() as any
  t.same(listing.entries.map((e: any) => [e.name, e.type, e.size]), [['data.txt', 'file', 12]])
  t.same(readdirSync(join(box.work, 'in')), ['data.txt'], 'no upload leftovers beside it')

  const got = await call(KEYS.alice, 'GET', `/api/files/content?path=${q('in/data.txt')}`)
  t.equal(await got.text(), 'version two\n')
  const etag = got.headers.get('etag') ?? ''
  t.equal((await call(KEYS.alice, 'GET', `/api/files/content?path=${q('in/data.txt')}`, { headers: { 'if-none-match': etag } })).status, 304)
  const part = await call(KEYS.alice, 'GET', `/api/files/content?path=${q('in/data.txt')}`, { headers: { range: 'bytes=8-10' } })
  t.equal(part.status, 206)
  t.equal(await part.text(), 'two')
  t.equal(part.headers.get('content-range'), 'bytes 8-10/12')
  t.equal((await call(KEYS.alice, 'GET', `/api/files/content?path=${q('in/data.txt')}`, { headers: { range: 'bytes=50-' } })).status, 416)

  model.on('read the data', [{ tool: 'Bash', input: { command: 'cat in/data.txt' } }, { text: 'read it' }])
  const r = await execute(KEYS.alice, { prompt: 'read the data', allowed_tools: ['Bash(cat *)'] })
  t.equal(r.status, 'succeeded', r.error)
  t.match(toolResults(model.calls).at(-1), /version two/, 'the run read the uploaded file')

  t.equal((await call(KEYS.alice, 'DELETE', `/api/files?path=${q('in/data.txt')}`)).status, 204)
  t.notOk(existsSync(join(box.work, 'in', 'data.txt')))
  t.equal((await call(KEYS.alice, 'DELETE', `/api/files?path=${q('in/data.txt')}`)).status, 404)
})

test('refused: outside the workspace, through links, without the scope; an upload over the cap leaves nothing', async t => {
  const { box, call } = await server(t, { MAX_UPLOAD_BYTES: '2048' })
  writeFileSync(join(box.outside, 'secret.txt'), 'outside secret')
  symlinkSync(join(box.outside, 'secret.txt'), join(box.work, 'link-to-secret'))
  symlinkSync(box.outside, join(box.work, 'linkdir'))
  const status = async (method: string, path: string, body?: string): Promise<number> => (await call(KEYS.alice, method, path, body !== undefined ? { body } : {})).status
  t.equal(await status('GET', `/api/files/content?path=${q('../outside/secret.txt')}`), 403, '.. out of the root')
  t.equal(await status('GET', `/api/files/content?path=${q(join(box.outside, 'secret.txt'))}`), 403, 'an absolute path outside')
  const viaLink = await call(KEYS.alice, 'GET', '/api/files/content?path=link-to-secret')
  t.equal(viaLink.status, 403, 'a link is not followed')
  t.notMatch(await viaLink.text(), /outside secret/)
  t.equal(await status('PUT', `/api/files/content?path=${q('linkdir/planted.txt')}`, 'x'), 403, 'nor written through')
  t.notOk(existsSync(join(box.outside, 'planted.txt')), 'nothing landed outside')
  t.equal(await status('GET', '/api/files?path=linkdir'), 403, 'nor listed through')
  const listing = await (await call(KEYS.alice, 'GET', '/api/files?path=.')).json() as any
  t.same(listing.entries.filter((e: any) => e.type === 'link').map((e: any) => e.name).sort(), ['link-to-secret', 'linkdir'], 'links are shown as links')
  t.equal(await status('DELETE', '/api/files?path=linkdir'), 204, 'deleting a link removes the link')
  t.ok(existsSync(box.outside) && existsSync(join(box.outside, 'secret.txt')), 'not what it pointed to')

  const reader = await call(KEYS.reader, 'PUT', '/api/files/content?path=r.txt', { body: 'x' })
  t.equal(reader.status, 403, 'files:read cannot write')
  t.equal((await call(KEYS.reader, 'GET', '/api/files?path=.')).status, 200, 'but reads')

  const big = await call(KEYS.alice, 'PUT', '/api/files/content?path=big.bin', { body: 'x'.repeat(4096) })
  t.equal(big.status, 413)
  const problem = await big.json() as any
  t.equal(problem.code, 'upload_too_large')
  t.notMatch(problem.detail, /\n\s+at /, 'no stack')
  t.same(readdirSync(box.work).filter(n => n.includes('big')), [], 'nothing left of it')
})

test('archives: a .tar.gz unpacked, the directory downloaded as one; a hostile archive writes nothing', async t => {
  const { box, call } = await server(t)
  const tarGz = async (entries: Array<{ name: string, body?: string, type?: 'file' | 'symlink' | 'directory', linkname?: string, mode?: number }>): Promise<Buffer> => {
    const p = tarPack()
    for (const e of entries) p.entry({ name: e.name, type: e.type ?? 'file', ...(e.linkname !== undefined ? { linkname: e.linkname } : {}), ...(e.mode !== undefined ? { mode: e.mode } : {}) }, e.body ?? '')
    p.finalize()
    const chunks: Buffer[] = []
    for await (const c of p.pipe(createGzip())) chunks.push(c as Buffer)
    return Buffer.concat(chunks)
  }
  const good = await tarGz([{ name: 'src/main.py', body: 'print("hi")\n' }, { name: 'run.sh', body: '#!/bin/sh\necho ok\n', mode: 0o755 }])
  const up = await call(KEYS.alice, 'POST', '/api/files/archive?path=repo', { body: new Uint8Array(good), headers: { 'content-type': 'application/gzip' } })
  t.equal(up.status, 200, await up.clone().text())
  t.match(await up.json(), { files: 2 })
  t.equal(readFileSync(join(box.work, 'repo', 'src', 'main.py'), 'utf8'), 'print("hi")\n')
  t.ok((statSync(join(box.work, 'repo', 'run.sh')).mode & 0o100) !== 0, 'executable stays executable')

  const down = await call(KEYS.alice, 'GET', '/api/files/archive?path=repo')
  t.equal(down.status, 200)
  t.equal(down.headers.get('content-type'), 'application/gzip')
  const tar = gunzipSync(Buffer.from(await down.arrayBuffer())).toString('latin1')
  t.match(tar, /src\/main\.py/)
  t.match(tar, /print\("hi"\)/)

  const before = readdirSync(join(box.work, 'repo')).sort()
  for (const [why, entries] of [
    ['an entry outside', [{ name: 'ok.txt', body: 'fine' }, { name: '../escaped.txt', body: 'evil' }]],
    ['a link', [{ name: 'ok.txt', body: 'fine' }, { name: 'l', type: 'symlink', linkname: '/etc/passwd' }]]
  ] as const) {
    const res = await call(KEYS.alice, 'POST', '/api/files/archive?path=repo', { body: new Uint8Array(await tarGz(entries as any)), headers: { 'content-type': 'application/gzip' } })
    t.equal(res.status, 400, `${why}: refused`)
    t.same(readdirSync(join(box.work, 'repo')).sort(), before, `${why}: nothing written`)
  }
  t.notOk(existsSync(join(box.work, 'escaped.txt')))
  const notArchive = await call(KEYS.alice, 'POST', '/api/files/archive?path=repo', { body: 'just text' })
  t.equal(notArchive.status, 400)
})

test('a run\'s changes: listed, as a diff, reverted; a revert refused once the files changed again', async t => {
  const { box, model, call, execute } = await server(t)
  mkdirSync(join(box.work, 'proj'))
  writeFileSync(join(box.work, 'proj', 'keep.txt'), 'line one\nline two\n')
  writeFileSync(join(box.work, 'proj', 'gone.txt'), 'to be deleted\n')
  writeFileSync(join(box.work, 'proj', 'same.txt'), 'untouched\n')
  model.on('change things', [
    { tool: 'Bash', input: { command: 'sh -c "echo brand new > added.txt; echo line three >> keep.txt; rm gone.txt; mkdir -p deep/er; echo x > deep/er/y.txt"' } },
    { text: 'changed' }
  ])
  const r = await execute(KEYS.alice, { prompt: 'change things', working_directory: 'proj', allowed_tools: ['Bash(sh *)'] })
  t.equal(r.status, 'succeeded', r.error)
  t.same(r.changes, { files: 4, added: 2, modified: 1, deleted: 1 }, 'the result counts the changes')

  const list = await (await call(KEYS.alice, 'GET', `/api/runs/${r.run_id as string}/changes`)).json() as any
  t.same(list.files.map((f: any) => [f.path, f.change]).sort(), [['added.txt', 'added'], ['deep/er/y.txt', 'added'], ['gone.txt', 'deleted'], ['keep.txt', 'modified']])
  t.match(list.files.find((f: any) => f.path === 'keep.txt'), { size_before: 18, size_after: 29 })
  t.equal(list.working_directory, join(box.work, 'proj'))
  const diff = await call(KEYS.alice, 'GET', `/api/runs/${r.run_id as string}/changes`, { headers: { accept: 'text/x-diff' } })
  const text = await diff.text()
  t.match(text, /\+line three/)
  t.match(text, /-to be deleted/)
  t.match(text, /\+brand new/)
  t.notMatch(text, /untouched/)

  t.equal((await call(KEYS.bob, 'GET', `/api/runs/${r.run_id as string}/changes`)).status, 404, 'another key\'s run is not found')
  t.equal((await call(KEYS.bob, 'POST', `/api/runs/${r.run_id as string}/revert`)).status, 404)

  const reverted = await call(KEYS.alice, 'POST', `/api/runs/${r.run_id as string}/revert`)
  t.equal(reverted.status, 200, await reverted.clone().text())
  t.equal(readFileSync(join(box.work, 'proj', 'keep.txt'), 'utf8'), 'line one\nline two\n', 'modified: put back')
  t.equal(readFileSync(join(box.work, 'proj', 'gone.txt'), 'utf8'), 'to be deleted\n', 'deleted: back')
  t.notOk(existsSync(join(box.work, 'proj', 'added.txt')), 'added: removed')
  t.notOk(existsSync(join(box.work, 'proj', 'deep')), 'with the directories it made')
  const all = await readSse(await call(KEYS.alice, 'GET', `/api/runs/${r.run_id as string}/events`))
  const after = await readSse(await call(KEYS.alice, 'GET', `/api/runs/${r.run_id as string}/events?after=${all.events.at(-1)?.id ?? 0}`))
  t.same(after.events.map(e => e.event), ['files_reverted'], 'the revert is an event of the run, after its result')
  t.match(JSON.parse(after.events[0]?.data ?? '{}'), { files: 4 })

  // A run whose file is changed afterwards by someone else: its revert would lose that change.
  model.on('edit again', [{ tool: 'Bash', input: { command: 'sh -c "echo by the run >> keep.txt"' } }, { text: 'edited' }])
  const second = await execute(KEYS.alice, { prompt: 'edit again', working_directory: 'proj', allowed_tools: ['Bash(sh *)'] })
  t.equal(second.status, 'succeeded', second.error)
  await call(KEYS.alice, 'PUT', `/api/files/content?path=${q('proj/keep.txt')}`, { body: 'a person edited this\n' })
  const refused = await call(KEYS.alice, 'POST', `/api/runs/${second.run_id as string}/revert`)
  t.equal(refused.status, 409)
  t.match(await refused.json(), { code: 'changed_since' })
  t.equal(readFileSync(join(box.work, 'proj', 'keep.txt'), 'utf8'), 'a person edited this\n', 'nothing was reverted')
})

const root = process.getuid?.() === 0
test('with agent identities: a key\'s files are its identity\'s, in its own area only', { skip: root ? false : 'agent identities need root (CI runs as root)' }, async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const base = openToAgents(box)
  const keys = keysFile(box, { alice: { key: KEYS.alice, scopes: ['runs:write', 'runs:read'] }, bob: { key: KEYS.bob, scopes: ['runs:write', 'runs:read'] } })
  const srv = await startServer(t, testEnv(box, model, { ISOLATION: 'uid', AGENTS_DIR: join(base, 'agents'), AGENT_UID_BASE: String(23_000 + (process.pid % 1000) * 10), API_KEYS_FILE: keys }))
  const put = await fetch(`${srv.base}/api/files/content?path=${q('notes/todo.txt')}`, { method: 'PUT', headers: { 'x-api-key': KEYS.alice }, body: 'buy milk\n' })
  t.equal(put.status, 201, await put.clone().text())
  const { path } = await put.json() as any
  t.equal(path, join(box.work, 'alice', 'notes', 'todo.txt'), 'relative to the key\'s own work area')
  const area = statSync(join(box.work, 'alice'))
  t.equal(statSync(path).uid, area.uid, 'the file is alice\'s identity\'s')
  t.equal(statSync(join(box.work, 'alice', 'notes')).uid, area.uid, 'and so is the directory made for it')
  t.ok(area.uid >= 23_000)
  const bobReads = await fetch(`${srv.base}/api/files/content?path=${q(path)}`, { headers: { 'x-api-key': KEYS.bob } })
  t.equal(bobReads.status, 403, 'bob cannot reach alice\'s area')
  const bobUp = await fetch(`${srv.base}/api/files/content?path=${q('../alice/planted.txt')}`, { method: 'PUT', headers: { 'x-api-key': KEYS.bob }, body: 'x' })
  t.equal(bobUp.status, 403)
  t.notOk(existsSync(join(box.work, 'alice', 'planted.txt')))
  model.on('read my notes', [{ tool: 'Bash', input: { command: 'cat notes/todo.txt' } }, { text: 'read' }])
  const r = await (await fetch(`${srv.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': KEYS.alice, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'read my notes', allowed_tools: ['Bash(cat *)'] }) })).json() as any
  t.equal(r.status, 'succeeded', r.error)
  t.match(toolResults(model.calls).at(-1), /buy milk/, 'alice\'s run reads what she uploaded')
  t.same(r.changes, { files: 0, added: 0, modified: 0, deleted: 0 }, 'recorded before and after, as alice\'s identity')

  // A run that swaps its own directory for a link to a directory only root may read, then asks
  // for its changes (read as root, they would show the secret) and their revert (written as root,
  // they would land there).
  const vault = join(box.outside, 'vault')
  mkdirSync(vault, { mode: 0o700 })
  writeFileSync(join(vault, 'shadow'), 'root:SECRET-HASH\n', { mode: 0o600 })
  const proj = join(box.work, 'alice', 'proj')
  await fetch(`${srv.base}/api/files/content?path=${q('proj/a.txt')}`, { method: 'PUT', headers: { 'x-api-key': KEYS.alice }, body: 'a\n' })
  model.on('swap my directory', [{ tool: 'Bash', input: { command: `sh -c "rm a.txt; cd ..; mv proj proj.old; ln -s ${vault} proj"` } }, { text: 'swapped' }])
  const swapped = await (await fetch(`${srv.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': KEYS.alice, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'swap my directory', working_directory: proj, allowed_tools: ['Bash(sh *)'] }) })).json() as any
  t.equal(swapped.status, 'succeeded', swapped.error)
  const seen = await fetch(`${srv.base}/api/runs/${swapped.run_id as string}/changes`, { headers: { 'x-api-key': KEYS.alice, accept: 'text/x-diff' } })
  t.notMatch(await seen.text(), /SECRET-HASH/, 'the changes never show what only root may read')
  const revert = await fetch(`${srv.base}/api/runs/${swapped.run_id as string}/revert`, { method: 'POST', headers: { 'x-api-key': KEYS.alice } })
  t.not(revert.status, 200, 'no revert through the link')
  t.same(readdirSync(vault), ['shadow'], 'nothing was written where the link points')
  t.equal(readFileSync(join(vault, 'shadow'), 'utf8'), 'root:SECRET-HASH\n')
  t.equal(statSync(join(vault, 'shadow')).uid, 0)
})
