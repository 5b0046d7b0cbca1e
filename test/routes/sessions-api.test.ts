import { test } from 'tap'
import { existsSync, mkdirSync, readdirSync, symlinkSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { auth, build, fakeModel, inCluster, keysFile, sandbox } from '../helper.js'

/** Every transcript file of a session under a Claude config dir. */
function transcriptFiles (configDir: string, sessionId: string): string[] {
  const projects = join(configDir, 'projects')
  if (!existsSync(projects)) return []
  return readdirSync(projects).map(p => join(projects, p, `${sessionId}.jsonl`)).filter(f => existsSync(f))
}

test('sessions API: list, get, transcript with paging, rename, fork, delete, against real sessions', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  mkdirSync(join(box.work, 'a'))
  mkdirSync(join(box.work, 'b'))
  const { app } = await build(t, { box, model })
  const run = async (payload: Record<string, unknown>) => {
    const res = await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload })
    t.equal(res.statusCode, 200, res.body)
    return res.json()
  }
  const get = async (url: string) => await app.inject({ method: 'GET', url, headers: auth })

  const a1 = await run({ prompt: 'remember the word PAPAYA', working_directory: join(box.work, 'a') })
  const a2 = await run({ prompt: 'which word did I say?', session_id: a1.session_id })
  const b1 = await run({ prompt: 'a session in b', working_directory: join(box.work, 'b') })
  const sid = a1.session_id as string

  // List: most recently active first, with the run store's figures.
  let list = (await get('/api/sessions')).json()
  t.strictSame(list.sessions.map((s: any) => s.session_id), [b1.session_id, sid])
  t.match(list.sessions[1], { session_id: sid, working_directory: join(box.work, 'a'), title: 'remember the word PAPAYA', key_name: 'default', run_count: 2, last_run_id: a2.run_id, busy: false })
  t.equal(list.next_cursor, null)
  const filtered = (await get(`/api/sessions?working_directory=${encodeURIComponent(join(box.work, 'b'))}`)).json()
  t.strictSame(filtered.sessions.map((s: any) => s.session_id), [b1.session_id], 'filtered by working_directory')
  const page1 = (await get('/api/sessions?limit=1')).json()
  t.equal(page1.sessions.length, 1)
  t.type(page1.next_cursor, 'string')
  const page2 = (await get(`/api/sessions?limit=1&cursor=${page1.next_cursor as string}`)).json()
  t.strictSame(page2.sessions.map((s: any) => s.session_id), [sid], 'the cursor gives the next page')
  t.equal(page2.next_cursor, null)
  const badCursor = await get('/api/sessions?cursor=nonsense')
  t.equal(badCursor.statusCode, 400)
  t.equal(badCursor.json().errors[0].path, '/cursor')

  // One session, and its transcript in order.
  t.match((await get(`/api/sessions/${sid}`)).json(), { session_id: sid, run_count: 2 })
  const transcript = (await get(`/api/sessions/${sid}/messages`)).json()
  const users = transcript.messages.filter((m: any) => m.type === 'user')
  const assistants = transcript.messages.filter((m: any) => m.type === 'assistant')
  t.strictSame(users.map((m: any) => JSON.stringify(m.message.content)).map((c: string) => c.includes('PAPAYA') ? 'first' : c.includes('which word') ? 'second' : 'other'), ['first', 'second'], 'both prompts, in order')
  t.ok(assistants.length >= 2, 'and the answers')
  for (const m of transcript.messages) {
    t.match(m, { uuid: /^[0-9a-f-]{36}$/, type: /^(user|assistant|system)$/ })
    t.ok(m.timestamp === null || !Number.isNaN(Date.parse(m.timestamp)))
  }
  t.ok(transcript.messages.some((m: any) => typeof m.timestamp === 'string'), 'messages carry their time')
  const paged: any[] = []
  let cursor: string | null = null
  for (let guard = 0; guard < 20; guard++) {
    const page: any = (await get(`/api/sessions/${sid}/messages?limit=1${cursor !== null ? `&cursor=${cursor}` : ''}`)).json()
    paged.push(...page.messages)
    cursor = page.next_cursor
    if (cursor === null) break
  }
  t.strictSame(paged.map(m => m.uuid), transcript.messages.map((m: any) => m.uuid), 'paging one by one gives the same transcript')

  // Rename.
  const renamed = await app.inject({ method: 'PATCH', url: `/api/sessions/${sid}`, headers: auth, payload: { title: '  Fruit talk  ' } })
  t.equal(renamed.statusCode, 200, renamed.body)
  t.equal(renamed.json().title, 'Fruit talk')
  t.equal((await get('/api/sessions')).json().sessions[0].session_id, sid, 'renaming is activity: it comes first')
  t.equal((await app.inject({ method: 'PATCH', url: `/api/sessions/${sid}`, headers: auth, payload: { title: '' } })).statusCode, 400)
  t.equal((await app.inject({ method: 'PATCH', url: `/api/sessions/${sid}`, headers: auth, payload: { name: 'x' } })).statusCode, 400)

  // Fork at the first answer: nothing runs; the fork resumes with that history only.
  const firstAnswer = assistants[0].uuid as string
  const calls = model.calls.length
  const forkRes = await app.inject({ method: 'POST', url: `/api/sessions/${sid}/fork`, headers: auth, payload: { up_to_message_uuid: firstAnswer } })
  t.equal(forkRes.statusCode, 201, forkRes.body)
  const fork = forkRes.json()
  t.not(fork.session_id, sid)
  t.equal(forkRes.headers.location, `/api/sessions/${fork.session_id as string}`)
  t.match(fork, { title: 'Fruit talk (fork)', working_directory: join(box.work, 'a'), run_count: 0, last_run_id: null, busy: false })
  t.equal(model.calls.length, calls, 'a fork runs nothing')
  const forkTranscript = (await get(`/api/sessions/${fork.session_id as string}/messages`)).json()
  t.ok(JSON.stringify(forkTranscript.messages).includes('PAPAYA'), 'the fork has the history up to the message')
  t.notOk(JSON.stringify(forkTranscript.messages).includes('which word'), 'and nothing after it')
  const onFork = await run({ prompt: 'continue the fork', session_id: fork.session_id })
  t.equal(onFork.success, true, onFork.error)
  t.equal(onFork.session_id, fork.session_id)
  t.ok(model.calls.at(-1)!.userTexts.includes('remember the word PAPAYA'), 'a run on the fork has the original history')
  t.notOk(model.calls.at(-1)!.userTexts.includes('which word did I say?'), 'up to the fork point only')
  const original = (await get(`/api/sessions/${sid}/messages`)).json()
  t.notOk(JSON.stringify(original.messages).includes('continue the fork'), 'the original is not changed')
  t.equal((await app.inject({ method: 'POST', url: `/api/sessions/${sid}/fork`, headers: auth })).statusCode, 201, 'a bodiless fork copies it all')
  const badPoint = await app.inject({ method: 'POST', url: `/api/sessions/${sid}/fork`, headers: auth, payload: { up_to_message_uuid: randomUUID() } })
  t.equal(badPoint.statusCode, 400, badPoint.body)

  // Delete: the transcript goes, the session is gone to the API.
  const configDir = join(box.home, '.claude')
  t.equal(transcriptFiles(configDir, b1.session_id).length, 1, 'setup: b1 has a transcript')
  const del = await app.inject({ method: 'DELETE', url: `/api/sessions/${b1.session_id as string}`, headers: auth })
  t.equal(del.statusCode, 204, del.body)
  t.strictSame(transcriptFiles(configDir, b1.session_id), [], 'its transcript file is gone')
  for (const url of [`/api/sessions/${b1.session_id as string}`, `/api/sessions/${b1.session_id as string}/messages`]) {
    const res = await get(url)
    t.equal(res.statusCode, 404)
    t.equal(res.json().code, 'session_not_found')
  }
  t.equal((await app.inject({ method: 'DELETE', url: `/api/sessions/${b1.session_id as string}`, headers: auth })).statusCode, 404, 'deleting twice: 404')
  list = (await get('/api/sessions')).json()
  t.notOk(list.sessions.some((s: any) => s.session_id === b1.session_id), 'not listed')
  t.equal((await get(`/api/sessions/${randomUUID()}`)).json().code, 'session_not_found')
  t.equal((await get('/api/sessions/not-a-uuid')).statusCode, 400)
})

test('sessions API: delete is refused while a run of the session is running; busy shows it', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const { app } = await build(t, { box, model })
  const first = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'hello' } })).json()
  model.on('hold on', [{ stall: true }])
  const started = await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'hold on', session_id: first.session_id } })
  t.equal(started.statusCode, 202)
  await model.nextCall('hold on')
  t.equal((await app.inject({ method: 'GET', url: `/api/sessions/${first.session_id as string}`, headers: auth })).json().busy, true)
  const del = await app.inject({ method: 'DELETE', url: `/api/sessions/${first.session_id as string}`, headers: auth })
  t.equal(del.statusCode, 409)
  t.equal(del.json().code, 'session_busy')
  t.equal(transcriptFiles(join(box.home, '.claude'), first.session_id).length, 1, 'nothing was deleted')
  // A run that forks the session reads it when it starts: the session is busy meanwhile too.
  model.on('fork and hold', [{ stall: true }])
  const forking = await app.inject({ method: 'POST', url: '/api/runs', headers: auth, payload: { prompt: 'fork and hold', session_id: first.session_id, fork_session: true } })
  t.equal(forking.statusCode, 202)
  await app.inject({ method: 'POST', url: `/api/runs/${started.json().id as string}/cancel`, headers: auth })
  await model.nextCall('fork and hold')
  const whileForked = await app.inject({ method: 'DELETE', url: `/api/sessions/${first.session_id as string}`, headers: auth })
  t.equal(whileForked.statusCode, 409, 'a run forking it keeps it from being deleted')
  await app.inject({ method: 'POST', url: `/api/runs/${forking.json().id as string}/cancel`, headers: auth })
  t.equal((await app.inject({ method: 'GET', url: `/api/sessions/${first.session_id as string}`, headers: auth })).json().busy, false)
  t.equal((await app.inject({ method: 'DELETE', url: `/api/sessions/${first.session_id as string}`, headers: auth })).statusCode, 204, 'once it ended')
})

test('sessions API: a key sees and changes only its own sessions; admin and runs:read_all see all; pruning keeps ownership', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const keys = keysFile(box, {
    alice: { key: 'alice-key-0123456789', scopes: ['runs:write', 'runs:read'] },
    bob: { key: 'bob-key-0123456789ab', scopes: ['runs:write', 'runs:read'] },
    dash: { key: 'dash-key-0123456789a', scopes: ['runs:read_all'] },
    root: { key: 'root-key-0123456789a', scopes: ['admin'] }
  })
  const first = await build(t, { box, model, env: { API_KEYS_FILE: keys } })
  const as = (key: string) => ({ 'x-api-key': key })
  const alice = as('alice-key-0123456789')
  const bob = as('bob-key-0123456789ab')
  const mine = (await first.app.inject({ method: 'POST', url: '/api/execute', headers: alice, payload: { prompt: 'alice secret PLUM' } })).json()
  t.equal(mine.success, true, mine.error)
  const sid = mine.session_id as string
  const other = (await first.app.inject({ method: 'POST', url: '/api/execute', headers: bob, payload: { prompt: 'bob here' } })).json()
  t.equal(other.success, true, other.error)
  await first.app.close()
  // Restarted keeping one run: alice's is pruned at start. Her session stays hers.
  const { app } = await build(t, { box, model, env: { API_KEYS_FILE: keys, RUN_RETENTION_MAX_RUNS: '1' } })
  t.equal((await app.inject({ method: 'GET', url: `/api/runs/${mine.run_id as string}`, headers: alice })).statusCode, 404, 'alice\'s run was pruned')

  const routes: Array<{ method: 'GET' | 'PATCH' | 'POST' | 'DELETE', url: string, payload?: object }> = [
    { method: 'GET', url: `/api/sessions/${sid}` },
    { method: 'GET', url: `/api/sessions/${sid}/messages` },
    { method: 'PATCH', url: `/api/sessions/${sid}`, payload: { title: 'mine now' } },
    { method: 'POST', url: `/api/sessions/${sid}/fork`, payload: {} },
    { method: 'DELETE', url: `/api/sessions/${sid}` }
  ]
  for (const r of routes) {
    const res = await app.inject({ ...r, headers: bob })
    t.equal(res.statusCode, 404, `${r.method} ${r.url} by another key: 404`)
    t.equal(res.json().code, 'session_not_found')
    t.notOk(res.body.includes('PLUM'))
  }
  t.strictSame((await app.inject({ method: 'GET', url: '/api/sessions', headers: bob })).json().sessions.map((s: any) => s.session_id), [other.session_id], 'another key lists its own only')
  const dash = as('dash-key-0123456789a')
  t.equal((await app.inject({ method: 'GET', url: '/api/sessions', headers: dash })).json().sessions.length, 2, 'runs:read_all lists every key\'s')
  t.ok((await app.inject({ method: 'GET', url: `/api/sessions/${sid}/messages`, headers: dash })).body.includes('PLUM'), 'and reads them')
  t.equal((await app.inject({ method: 'PATCH', url: `/api/sessions/${sid}`, headers: dash, payload: { title: 'x' } })).statusCode, 403, 'but changes nothing')
  const root = as('root-key-0123456789a')
  t.equal((await app.inject({ method: 'PATCH', url: `/api/sessions/${sid}`, headers: root, payload: { title: 'by admin' } })).statusCode, 200, 'admin changes any')

  const hijack = await app.inject({ method: 'POST', url: '/api/execute', headers: bob, payload: { prompt: 'what did alice say?', session_id: sid } })
  t.equal(hijack.statusCode, 403, 'another key still cannot resume it')
  t.notOk(hijack.body.includes('PLUM'))
  t.notOk(model.calls.some(c => c.prompt === 'what did alice say?'), 'nothing ran')
  const still = (await app.inject({ method: 'GET', url: `/api/sessions/${sid}`, headers: alice })).json()
  t.match(still, { session_id: sid, key_name: 'alice', run_count: 0, last_run_id: null })
  const resumed = await app.inject({ method: 'POST', url: '/api/execute', headers: alice, payload: { prompt: 'still mine?', session_id: sid } })
  t.equal(resumed.json().success, true, 'the owner resumes it')
  t.ok(model.calls.at(-1)!.userTexts.includes('alice secret PLUM'))
})

test('sessions API: a transcript behind a link is not followed', { skip: inCluster ? 'cluster mode: transcripts are read from PostgreSQL, not from files' : false }, async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const { app } = await build(t, { box, model })
  const first = (await app.inject({ method: 'POST', url: '/api/execute', headers: auth, payload: { prompt: 'hello' } })).json()
  const sid = first.session_id as string
  const [file] = transcriptFiles(join(box.home, '.claude'), sid)
  const secret = join(box.outside, 'secret.jsonl')
  writeFileSync(secret, JSON.stringify({ type: 'user', uuid: randomUUID(), parentUuid: null, sessionId: sid, timestamp: new Date().toISOString(), message: { role: 'user', content: 'TOP-SECRET' } }) + '\n')
  rmSync(file!)
  symlinkSync(secret, file!)
  const res = await app.inject({ method: 'GET', url: `/api/sessions/${sid}/messages`, headers: auth })
  t.equal(res.statusCode, 409, res.body)
  t.equal(res.json().code, 'transcript_unreadable')
  t.notOk(res.body.includes('TOP-SECRET'))
  const del = await app.inject({ method: 'DELETE', url: `/api/sessions/${sid}`, headers: auth })
  t.equal(del.statusCode, 204)
  t.ok(existsSync(secret), 'deleting removed the link, not what it points to')
})
