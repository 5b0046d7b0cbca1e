import { test } from 'tap'
import OpenAI from 'openai'
import { API_KEY, build, listen, toolResults } from '../helper.js'

/** Client-side functions: the agent calls one, the completion answers tool_calls, the client's output goes to the parked run. */

test('a function call round trip: tool_calls, then the client\'s output reaches the same run', async t => {
  const built = await build(t)
  const base = await listen(built.app)
  const openai = new OpenAI({ apiKey: API_KEY, baseURL: `${base}/v1`, maxRetries: 0 })
  built.model.on('weather in Oslo?', [{ tool: 'mcp__client__get_weather', input: { city: 'Oslo' } }, { text: 'It is sunny in Oslo.' }])
  const tools: OpenAI.Chat.ChatCompletionTool[] = [{ type: 'function', function: { name: 'get_weather', description: 'The weather in a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }]
  const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: 'user', content: 'weather in Oslo?' }]
  const first = await openai.chat.completions.create({ model: 'claude-code', messages, tools })
  t.equal(first.choices[0]?.finish_reason, 'tool_calls')
  const call = first.choices[0]?.message.tool_calls?.[0] as any
  t.equal(call?.function.name, 'get_weather')
  t.same(JSON.parse(call?.function.arguments ?? '{}'), { city: 'Oslo' })
  messages.push(first.choices[0]!.message as OpenAI.Chat.ChatCompletionMessageParam, { role: 'tool', tool_call_id: call.id, content: 'sunny, 21C' })
  const second = await openai.chat.completions.create({ model: 'claude-code', messages, tools })
  t.equal(second.choices[0]?.message.content, 'It is sunny in Oslo.')
  t.equal(second.id, first.id, 'the same run went on')
  t.match(toolResults(built.model.calls).at(-1), /sunny, 21C/, 'the model got the client\'s output as the tool\'s result')
  t.same(built.model.calls[0]?.body.tools?.map((x: any) => x.name).filter((n: string) => n.startsWith('mcp__client')), ['mcp__client__get_weather'], 'offered to the agent beside its own tools')
})

test('streamed: the call comes as tool_calls deltas and finish_reason tool_calls; the answer streams on', async t => {
  const built = await build(t)
  const base = await listen(built.app)
  const openai = new OpenAI({ apiKey: API_KEY, baseURL: `${base}/v1`, maxRetries: 0 })
  built.model.on('time in Rome?', [{ say: 'Let me check.', tool: 'mcp__client__clock', input: { tz: 'Europe/Rome' } }, { text: ['It is ', 'noon.'], deltas: true }])
  const tools: OpenAI.Chat.ChatCompletionTool[] = [{ type: 'function', function: { name: 'clock', parameters: { type: 'object', properties: { tz: { type: 'string' } } } } }]
  const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: 'user', content: 'time in Rome?' }]
  const first = await openai.chat.completions.stream({ model: 'claude-code', messages, tools, stream: true }).finalChatCompletion()
  t.equal(first.choices[0]?.finish_reason, 'tool_calls')
  const call = first.choices[0]?.message.tool_calls?.[0] as any
  t.equal(call?.function.name, 'clock')
  t.same(JSON.parse(call?.function.arguments ?? '{}'), { tz: 'Europe/Rome' })
  t.match(first.choices[0]?.message.content ?? '', /Let me check/, 'the text before the call streamed too')
  messages.push(first.choices[0]!.message as OpenAI.Chat.ChatCompletionMessageParam, { role: 'tool', tool_call_id: call.id, content: '12:00' })
  const chunks: string[] = []
  const stream = await openai.chat.completions.create({ model: 'claude-code', messages, tools, stream: true })
  let id = ''
  let finish: string | null = null
  for await (const c of stream) {
    id = c.id
    chunks.push(c.choices[0]?.delta.content ?? '')
    finish = c.choices[0]?.finish_reason ?? finish
  }
  t.equal(chunks.join(''), 'It is noon.')
  t.ok(chunks.filter(Boolean).length >= 2, 'token deltas')
  t.equal(finish, 'stop')
  t.equal(id, first.id, 'the same run went on')
  t.match(toolResults(built.model.calls).at(-1), /12:00/)
  // A tool message that answers no parked call is history like any other: a new run carries it.
  built.model.on(/Tool result/, [{ text: 'noted' }])
  const stray = await openai.chat.completions.create({ model: 'claude-code', messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ id: 'call_x', type: 'function', function: { name: 'clock', arguments: '{}' } }] }, { role: 'tool', tool_call_id: 'call_x', content: '1' }], tools })
  t.not(stray.id, first.id)
  t.equal(stray.choices[0]?.message.content, 'noted')
})

test('Responses API: function_call items, then function_call_output items continue the run; streamed too', async t => {
  const built = await build(t)
  const base = await listen(built.app)
  const openai = new OpenAI({ apiKey: API_KEY, baseURL: `${base}/v1`, maxRetries: 0 })
  const tools: OpenAI.Responses.Tool[] = [{ type: 'function', name: 'lookup', description: 'Look a word up', parameters: { type: 'object', properties: { word: { type: 'string' } }, required: ['word'] }, strict: false }, { type: 'web_search_preview' }]
  built.model.on('define ferrule', [{ tool: 'mcp__client__lookup', input: { word: 'ferrule' } }, { text: 'A ferrule is a ring.' }])
  const first = await openai.responses.create({ model: 'claude-code', input: 'define ferrule', tools })
  t.equal(first.status, 'completed')
  const call = first.output.find(o => o.type === 'function_call')
  t.equal(call?.type === 'function_call' ? call.name : undefined, 'lookup')
  t.same(call?.type === 'function_call' ? JSON.parse(call.arguments) : undefined, { word: 'ferrule' })
  t.same(built.model.calls[0]?.body.tools?.map((x: any) => x.name).filter((n: string) => n.startsWith('mcp__client')), ['mcp__client__lookup'], 'the function offered; the hosted tool left to the agent')
  const second = await openai.responses.create({ model: 'claude-code', previous_response_id: first.id, input: [{ type: 'function_call_output', call_id: call?.type === 'function_call' ? call.call_id : '', output: 'a metal ring or cap' }], tools })
  t.equal(second.output_text, 'A ferrule is a ring.')
  t.equal(second.id, first.id, 'the same run went on')
  t.match(toolResults(built.model.calls).at(-1), /a metal ring or cap/)

  built.model.on('define grommet', [{ say: 'Looking it up.', tool: 'mcp__client__lookup', input: { word: 'grommet' } }, { text: ['A grommet ', 'is an eyelet.'], deltas: true }])
  const types: string[] = []
  let done: OpenAI.Responses.Response | undefined
  let args = ''
  for await (const e of await openai.responses.create({ model: 'claude-code', input: 'define grommet', tools, stream: true })) {
    types.push(e.type)
    if (e.type === 'response.function_call_arguments.done') args = e.arguments
    if (e.type === 'response.completed') done = e.response
  }
  t.same(JSON.parse(args), { word: 'grommet' })
  t.ok(types.indexOf('response.output_text.done') < types.indexOf('response.function_call_arguments.done'), 'the text said before the call closes first')
  t.equal(types.at(-1), 'response.completed')
  const streamedCall = done?.output.find(o => o.type === 'function_call')
  t.ok(streamedCall !== undefined, 'the completed response holds the call')
  // A stateless client sends the whole history back, with its output; the parked run goes on, streamed.
  const history: OpenAI.Responses.ResponseInput = [{ role: 'user', content: 'define grommet' }, ...(done?.output ?? []) as OpenAI.Responses.ResponseInputItem[], { type: 'function_call_output', call_id: streamedCall?.type === 'function_call' ? streamedCall.call_id : '', output: 'an eyelet' }]
  let text = ''
  for await (const e of await openai.responses.create({ model: 'claude-code', input: history, tools, stream: true })) {
    if (e.type === 'response.output_text.delta') text += e.delta
  }
  t.equal(text, 'A grommet is an eyelet.')
  const bg = await openai.responses.create({ model: 'claude-code', input: 'x', tools, background: true }).catch((e: unknown) => e)
  t.ok(bg instanceof OpenAI.BadRequestError && bg.param === 'background', 'a background response cannot park')
})
