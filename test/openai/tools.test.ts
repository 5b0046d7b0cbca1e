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
