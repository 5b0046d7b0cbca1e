import { test } from 'tap'
import { join } from 'node:path'
import { build, eventually, keysFile, sandbox } from '../helper.js'

const KEYS = { bot: 'bot-key-0123456789abcdef', person: 'person-key-0123456789abc', other: 'other-key-0123456789abcd', peek: 'peek-key-0123456789abcde' }
const as = (k: keyof typeof KEYS) => ({ 'x-api-key': KEYS[k] })

test('who may see and answer approvals; messages and interrupts are the run\'s key\'s', async t => {
  const box = sandbox(t)
  const file = keysFile(box, {
    bot: { key: KEYS.bot, scopes: ['runs:write', 'runs:read'] },
    person: { key: KEYS.person, scopes: ['approvals:write', 'runs:read_all'] },
    other: { key: KEYS.other, scopes: ['runs:write', 'runs:read'] },
    peek: { key: KEYS.peek, scopes: ['runs:read'] }
  })
  const { app, model } = await build(t, { box, env: { API_KEYS_FILE: file, CLAUDE_API_KEY: '' } })
  model.on('bot wants to write', [{ tool: 'Write', input: { file_path: join(box.work, 'bot.txt'), content: 'x' } }, { text: 'ok' }])
  const run = (await app.inject({ method: 'POST', url: '/api/runs', headers: as('bot'), payload: { prompt: 'bot wants to write', permission_mode: 'default', approvals: 'ask' } })).json()
  let pending: any[] = []
  t.ok(await eventually(async () => {
    pending = (await app.inject({ url: '/api/approvals?status=pending', headers: as('person') })).json().approvals
    return pending.length === 1
  }, 20_000), 'the person\'s key sees the bot\'s pending approval')
  const url = `/api/runs/${run.id}/approvals/${pending[0].approval_id}`
  t.same((await app.inject({ url: '/api/approvals', headers: as('other') })).json().approvals, [], 'another key sees none of it')
  const byOther = await app.inject({ method: 'POST', url, headers: as('other'), payload: { decision: 'allow' } })
  t.equal(byOther.statusCode, 404, 'another key cannot answer: 404')
  const byPeek = await app.inject({ method: 'POST', url, headers: as('peek'), payload: { decision: 'allow' } })
  t.equal(byPeek.statusCode, 403, 'a read-only key cannot answer: 403')
  t.equal((await app.inject({ method: 'POST', url: `/api/runs/${run.id}/messages`, headers: as('other'), payload: { prompt: 'hi' } })).statusCode, 404, 'another key cannot message the run')
  t.equal((await app.inject({ method: 'POST', url: `/api/runs/${run.id}/interrupt`, headers: as('other') })).statusCode, 404, 'nor interrupt it')
  t.equal((await app.inject({ method: 'POST', url: `/api/runs/${run.id}/messages`, headers: as('person'), payload: { prompt: 'hi' } })).statusCode, 403, 'approvals:write cannot message a run')
  const byPerson = await app.inject({ method: 'POST', url, headers: as('person'), payload: { decision: 'deny', message: 'No.' } })
  t.equal(byPerson.statusCode, 200, 'the person answers')
  t.equal(byPerson.json().decided_by, 'person')
})
