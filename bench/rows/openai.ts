import { API_KEY, execute, headers, median, quantile, readSse, round } from '../lib.js'
import { log, model, quick, rows, server } from '../context.js'

/** One streamed run as a client sees it: ms from sending to each content delta, the text, and whether it ended well. */
interface Streamed { at: number[], text: string, ok: boolean }

/**
 * Row 12: the OpenAI-compatible API: a trivial run through POST /v1/chat/completions against
 * POST /api/execute (interleaved), and each streamed token against the native event stream of the
 * very same run.
 */
export async function openai (): Promise<void> {
  const n = quick ? 3 : 10
  const prompt = 'stream for the bench'
  const pieces = Array.from({ length: 20 }, (_, i) => `piece ${i} `)
  const gap = 2
  log(`row 12: OpenAI-compatible API against the native one, ${n} interleaved pairs: trivial run, first streamed token (${pieces.length} deltas)`)
  model.on(prompt, [{ text: pieces, gapMs: gap, deltas: true }])
  const srv = await server()
  const bearer = { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }
  const chat0 = async (body: Record<string, unknown>): Promise<Response> =>
    await fetch(`${srv.url}/v1/chat/completions`, { method: 'POST', headers: bearer, body: JSON.stringify({ model: 'claude-code', ...body }) })
  /** A trivial run through POST /v1/chat/completions: the answer's text (throws if there is none). */
  const completion = async (): Promise<string> => {
    const r = await (await chat0({ messages: [{ role: 'user', content: 'say hi' }] })).json() as { choices?: Array<{ message?: { content?: unknown } }> }
    const content = r.choices?.[0]?.message?.content
    if (typeof content !== 'string' || content === '') throw new Error('chat completion failed: ' + JSON.stringify(r).slice(0, 300))
    return content
  }
  /**
   * One run seen both ways at once: POST /v1/chat/completions with stream (each `delta.content`,
   * ok with `finish_reason: stop`) and, for the very same run (its `X-Run-Id`), the native
   * GET /api/runs/{id}/events (each `text` event). Both clocks are this process's: the difference
   * per delta is what the OpenAI layer adds, free of the CLI's own start-up jitter between runs.
   */
  const bothWays = async (): Promise<{ chat: Streamed, native: Streamed }> => {
    const t0 = performance.now()
    const chat: Streamed = { at: [], text: '', ok: false }
    const native: Streamed = { at: [], text: '', ok: false }
    const res = await chat0({ messages: [{ role: 'user', content: prompt }], stream: true, stream_options: { include_usage: true } })
    const id = res.headers.get('x-run-id')
    if (id === null) throw new Error('no X-Run-Id on the chat stream')
    const follower = fetch(`${srv.url}/api/runs/${id}/events`, { headers }).then(async r => await readSse(r, e => {
      if (e.event === 'text') {
        const text = (JSON.parse(e.data) as { text: string }).text
        if (text !== '') {
          native.at.push(performance.now() - t0)
          native.text += text
        }
      }
      if (e.event === 'result') native.ok = (JSON.parse(e.data) as { success: boolean }).success
    }))
    await readSse(res, e => {
      if (e.data === '[DONE]') return
      const c = JSON.parse(e.data) as { choices?: Array<{ delta?: { content?: unknown }, finish_reason?: string | null }>, error?: unknown }
      if (c.error !== undefined) throw new Error('chat stream failed: ' + e.data.slice(0, 300))
      const content = c.choices?.[0]?.delta?.content
      if (typeof content === 'string' && content !== '') {
        chat.at.push(performance.now() - t0)
        chat.text += content
      }
      if (c.choices?.[0]?.finish_reason === 'stop') chat.ok = true
    })
    await follower
    return { chat, native }
  }
  const check = (name: string, s: Streamed): Streamed => {
    if (!s.ok || s.text !== pieces.join('')) throw new Error(`${name} stream failed: ${s.at.length} deltas, ${JSON.stringify(s.text.slice(0, 100))}`)
    return s
  }
  const viaChat: number[] = []
  const viaExecute: number[] = []
  const chatStreams: Streamed[] = []
  const nativeStreams: Streamed[] = []
  try {
    await completion()
    await execute(srv.url, { prompt: 'say hi' })
    for (let i = 0; i < n; i++) {
      // Each pair in turn order: neither path always follows the other's run.
      for (const which of i % 2 === 0 ? ['chat', 'execute'] : ['execute', 'chat']) {
        const t0 = performance.now()
        if (which === 'chat') {
          await completion()
          viaChat.push(performance.now() - t0)
        } else {
          const r = await execute(srv.url, { prompt: 'say hi' })
          viaExecute.push(performance.now() - t0)
          if (r.success !== true) throw new Error('run failed: ' + JSON.stringify(r).slice(0, 300))
        }
      }
    }
    await bothWays()
    for (let i = 0; i < n; i++) {
      const { chat, native } = await bothWays()
      chatStreams.push(check('chat', chat))
      nativeStreams.push(check('native', native))
    }
  } finally {
    await srv.stop()
  }
  const ratio = median(viaChat) / median(viaExecute)
  const firstChat = chatStreams.map(s => s.at[0]!)
  const firstNative = nativeStreams.map(s => s.at[0]!)
  const diffs = firstChat.map((x, i) => x - firstNative[i]!)
  // Every delta of every run, chat against native: the first token and all after it.
  const allDiffs = chatStreams.flatMap((s, i) => s.at.map((t, k) => t - (nativeStreams[i]!.at[k] ?? t)))
  const added = { p50: quantile(allDiffs, 0.5), p99: quantile(allDiffs, 0.99), first: Math.max(...diffs) }
  const gaps = (ss: Streamed[]): number[] => ss.flatMap(s => s.at.slice(1).map((t, i) => t - s.at[i]!))
  const gapsChat = gaps(chatStreams)
  const gapsNative = gaps(nativeStreams)
  const signed = (x: number): string => `${x < 0 ? '−' : '+'}${round(Math.abs(x), 2)}`
  rows.push({
    row: 12,
    what: `OpenAI-compatible API: trivial run through POST /v1/chat/completions (median of ${n}, interleaved); each streamed token with stream: true against the native stream of the same run (${n} runs, ${pieces.length} deltas ${gap} ms apart)`,
    compared_with: 'the same run through POST /api/execute; the same run\'s own GET /api/runs/{id}/events, read at the same time (its `text` events)',
    measured: `${round(median(viaChat), 0)} ms; tokens ${signed(added.p50)} ms p50, ${signed(added.p99)} ms p99 after the native stream (first token at most ${signed(added.first)} ms; first at ${round(median(firstChat), 0)} ms median); delta gaps p50 ${round(quantile(gapsChat, 0.5), 2)} ms, p99 ${round(quantile(gapsChat, 0.99), 2)} ms`,
    baseline: `${round(median(viaExecute), 0)} ms; first token median ${round(median(firstNative), 0)} ms; delta gaps p50 ${round(quantile(gapsNative, 0.5), 2)} ms, p99 ${round(quantile(gapsNative, 0.99), 2)} ms`,
    figure: round(ratio, 3),
    unit: '× (chat completion vs /api/execute)',
    budget: '≤ 1.03×; streamed tokens ≤ +2 ms p99 added',
    pass: ratio <= 1.03 && added.p99 <= 2 && added.first <= 2,
    smoke_pass: ratio <= 1.5 && added.p99 <= 50,
    details: {
      chat_ms: viaChat.map(x => round(x, 1)),
      execute_ms: viaExecute.map(x => round(x, 1)),
      first_token_chat_ms: firstChat.map(x => round(x, 1)),
      first_token_native_ms: firstNative.map(x => round(x, 1)),
      first_token_added_ms: diffs.map(x => round(x, 2)),
      first_token_added_p50_ms: round(added.p50, 2),
      token_added_p99_ms: round(added.p99, 2),
      token_added_p50_ms: round(added.p50, 2),
      delta_gap_ms: {
        chat: { p50: round(quantile(gapsChat, 0.5), 2), p99: round(quantile(gapsChat, 0.99), 2), max: round(Math.max(...gapsChat), 2) },
        native: { p50: round(quantile(gapsNative, 0.5), 2), p99: round(quantile(gapsNative, 0.99), 2), max: round(Math.max(...gapsNative), 2) }
      }
    }
  })
}
