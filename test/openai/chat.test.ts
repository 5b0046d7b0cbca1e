import { test } from 'tap'
import OpenAI from 'openai'
import { API_KEY, build, listen } from '../helper.js'

/**
 * `/v1` driven by the official `openai` package against the real CLI and the fake model: the
 * models, chat completions plain and streamed (with usage), images, structured output, a
 * conversation the model sees as one growing Claude session, and each error as the client's own
 * typed error.
 */

const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=='

async function client (t: Parameters<typeof build>[0], env: Record<string, string> = {}) {
  const built = await build(t, { env })
  const base = await listen(built.app)
  const openai = new OpenAI({ apiKey: API_KEY, baseURL: `${base}/v1`, maxRetries: 0 })
  return { ...built, base, openai }
}

test('models: the CLI\'s own list and claude-code; chat plain and streamed with usage; the id is the run\'s', async t => {
  const { openai, model, base } = await client(t)
  const models = await openai.models.list()
  const ids = models.data.map(m => m.id)
  t.ok(ids.includes('claude-code'), 'the server\'s default alias')
  t.ok(ids.includes('sonnet') && ids.some(id => /^claude-sonnet/.test(id)), `the CLI's aliases and the ids they resolve to (${ids.join(', ')})`)

  model.on('say hello', [{ text: ['Hello', ' from', ' Claude'], gapMs: 30, deltas: true }])
  const plain = await openai.chat.completions.create({ model: 'claude-code', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'say hello' }] })
  t.equal(plain.object, 'chat.completion')
  t.equal(plain.choices[0]?.message.content, 'Hello from Claude')
  t.equal(plain.choices[0]?.finish_reason, 'stop')
  t.ok((plain.usage?.prompt_tokens ?? 0) > 0 && (plain.usage?.completion_tokens ?? 0) > 0, 'real usage from the run')
  const run = await (await fetch(`${base}/api/runs/${plain.id}`, { headers: { 'x-api-key': API_KEY } })).json() as any
  t.equal(run.status, 'succeeded', 'the completion\'s id is its run\'s, shown whole by /api/runs')
  t.match(JSON.stringify(model.calls.at(-1)!.body.system), /Be brief\./, 'the system message reaches the model as an appended system prompt')

  const stream = await openai.chat.completions.create({ model: 'claude-code', messages: [{ role: 'user', content: 'say hello' }], stream: true, stream_options: { include_usage: true } })
  const deltas: string[] = []
  let finish: string | null = null
  let usage: unknown
  for await (const chunk of stream) {
    const c = chunk.choices[0]
    if (c?.delta.content !== undefined && c.delta.content !== null && c.delta.content !== '') deltas.push(c.delta.content)
    if (c?.finish_reason !== undefined && c.finish_reason !== null) finish = c.finish_reason
    if (chunk.usage !== undefined && chunk.usage !== null) usage = chunk.usage
  }
  t.equal(deltas.join(''), 'Hello from Claude')
  t.ok(deltas.length >= 3, `token deltas as the model produced them (${deltas.length})`)
  t.equal(finish, 'stop')
  t.match(usage, { prompt_tokens: Number, completion_tokens: Number, total_tokens: Number }, 'usage last, when asked')
})

test('a three-turn conversation continues one Claude session with only the new turns', async t => {
  const { openai, model } = await client(t)
  model.on('my name is Ann', [{ text: 'Nice to meet you, Ann.' }])
  model.on('what is my name?', [{ text: 'Your name is Ann.' }])
  model.on('and spell it', [{ text: 'A-N-N' }])
  const history: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: 'user', content: 'my name is Ann' }]
  const sessions: string[] = []
  for (const next of ['what is my name?', 'and spell it', null]) {
    const { data, response } = await openai.chat.completions.create({ model: 'claude-code', messages: history }).withResponse()
    sessions.push(response.headers.get('x-session-id') ?? '')
    t.ok(response.headers.get('x-run-id') === data.id)
    history.push({ role: 'assistant', content: data.choices[0]!.message.content ?? '' })
    if (next !== null) history.push({ role: 'user', content: next })
  }
  t.equal(new Set(sessions).size, 1, `one session throughout (${sessions.join(', ')})`)
  const last = model.calls.at(-1)!
  t.same(last.userTexts, ['my name is Ann', 'what is my name?', 'and spell it'], 'the model sees one growing session, each turn once, not a re-typed transcript')
  t.notMatch(JSON.stringify(last.body.messages), /This conversation began before/)

  // A branch from the first answer (a client that regenerates, or edits its second message) forks
  // the session where that answer left it: the model sees the first turn and the new one, only.
  model.on('what is my age?', [{ text: 'You did not say.' }])
  const { data: branched, response: branchResponse } = await openai.chat.completions.create({ model: 'claude-code', messages: [...history.slice(0, 2), { role: 'user', content: 'what is my age?' }] }).withResponse()
  t.equal(branched.choices[0]?.message.content, 'You did not say.')
  const forked = branchResponse.headers.get('x-session-id') ?? ''
  t.ok(forked !== '' && forked !== sessions[0], `a session of its own (${forked})`)
  t.same(model.calls.at(-1)!.userTexts, ['my name is Ann', 'what is my age?'], 'the fork holds the turns before the branch point, not the later ones')
  t.notMatch(JSON.stringify(model.calls.at(-1)!.body.messages), /This conversation began before/)

  // An unknown history (another client's) starts a new session carrying the earlier turns.
  model.on(/earlier turns were/, [{ text: 'carried' }])
  const fresh = await openai.chat.completions.create({ model: 'claude-code', messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }, { role: 'user', content: 'go on' }] })
  t.equal(fresh.choices[0]?.message.content, 'carried')
  t.match(model.calls.at(-1)!.prompt, /User: hi\n\nAssistant: hello[\s\S]*go on/)
})

test('images reach the model; response_format json_schema answers structured output', async t => {
  const { openai, model } = await client(t)
  // The CLI adds a line naming where it keeps the image: that is the prompt's last text.
  model.on(/\[Image: source/, [{ text: 'a pixel' }])
  const seen = await openai.chat.completions.create({ model: 'claude-code', messages: [{ role: 'user', content: [{ type: 'text', text: 'what is in the picture?' }, { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG}` } }] }] })
  t.equal(seen.choices[0]?.message.content, 'a pixel', JSON.stringify(model.calls.at(-1)!.userTexts))
  const blocks = (model.calls.at(-1)!.body.messages as any[]).flatMap(m => Array.isArray(m.content) ? m.content : [])
  t.ok(blocks.some((b: any) => b.type === 'image' && b.source?.media_type === 'image/png' && b.source?.data === PNG), 'the image arrived as an image block')

  model.on('give me json', [{ tool: 'StructuredOutput', input: { answer: 42 } }, { text: 'done' }])
  const structured = await openai.chat.completions.create({
    model: 'claude-code',
    messages: [{ role: 'user', content: 'give me json' }],
    response_format: { type: 'json_schema', json_schema: { name: 'answer', schema: { type: 'object', properties: { answer: { type: 'number' } }, required: ['answer'] } } }
  })
  t.same(JSON.parse(structured.choices[0]?.message.content ?? 'null'), { answer: 42 })
})

test('errors come in OpenAI\'s shape, as the client\'s typed errors', async t => {
  const { openai, base } = await client(t)
  const wrongKey = new OpenAI({ apiKey: 'nope', baseURL: `${base}/v1`, maxRetries: 0 })
  t.ok(await wrongKey.models.list().catch((e: unknown) => e) instanceof OpenAI.AuthenticationError, 'a wrong key: AuthenticationError')
  const notFound = await openai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] }).catch((e: unknown) => e)
  t.ok(notFound instanceof OpenAI.NotFoundError, 'an unknown model: NotFoundError')
  t.equal((notFound as any).code, 'model_not_found')
  t.equal((notFound as any).param, 'model')
  const badRole = await openai.chat.completions.create({ model: 'claude-code', messages: [{ role: 'wizard', content: 'x' } as any] }).catch((e: unknown) => e)
  t.ok(badRole instanceof OpenAI.BadRequestError)
  t.equal((badRole as any).param, 'messages[0].role')
  const remote = await openai.chat.completions.create({ model: 'claude-code', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://example.com/cat.png' } }] }] }).catch((e: unknown) => e)
  t.ok(remote instanceof OpenAI.BadRequestError, 'an image by URL is refused (the server fetches nothing)')
  t.equal((remote as any).param, 'messages[0].content[0].image_url')
  const missing = await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }, body: '{"model":"claude-code"}' })
  t.equal(missing.status, 400)
  t.match(await missing.json(), { error: { type: 'invalid_request_error', param: 'messages' } })
  const many = await openai.chat.completions.create({ model: 'claude-code', messages: Array.from({ length: 1001 }, (_, i) => ({ role: i % 2 === 0 ? 'user' as const : 'assistant' as const, content: 'x' })) }).catch((e: unknown) => e)
  t.ok(many instanceof OpenAI.BadRequestError, 'more than 1,000 messages: 400')
  t.equal((many as any).param, 'messages')
  const badCall = await openai.chat.completions.create({ model: 'claude-code', messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{}] } as any, { role: 'user', content: 'y' }] }).catch((e: unknown) => e)
  t.ok(badCall instanceof OpenAI.BadRequestError, 'a tool call of the wrong shape: 400, not 500')
  t.equal((badCall as any).param, 'messages[1].tool_calls[0]')
  const none = await fetch(`${base}/v1/nothing`, { headers: { authorization: `Bearer ${API_KEY}` } })
  t.equal(none.status, 404)
  t.match(await none.json(), { error: { message: /No route/ } })
})

test('a key over its rate limit gets RateLimitError with Retry-After', async t => {
  const { keysFile, sandbox } = await import('../helper.js')
  const { writeFileSync, readFileSync } = await import('node:fs')
  const box = sandbox(t)
  const path = keysFile(box, { bot: { key: 'cca_bot-0123456789abcdefghijklmnopqrstuvwxyz', scopes: ['runs:write', 'runs:read'] } })
  const file = JSON.parse(readFileSync(path, 'utf8'))
  file.keys[0].rate_limit_per_min = 1
  writeFileSync(path, JSON.stringify(file))
  const built = await build(t, { box, env: { API_KEYS_FILE: path } })
  const base = await listen(built.app)
  const bot = new OpenAI({ apiKey: 'cca_bot-0123456789abcdefghijklmnopqrstuvwxyz', baseURL: `${base}/v1`, maxRetries: 0 })
  await bot.models.list()
  const limited = await bot.models.list().catch((e: unknown) => e)
  t.ok(limited instanceof OpenAI.RateLimitError, 'the second request in the minute: RateLimitError')
  t.ok(Number((limited as any).headers?.get('retry-after')) > 0, 'with Retry-After')
})
