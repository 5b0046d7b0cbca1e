import { test } from 'tap'
import { copyFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { build, eventually, fakeModel, keysFile, listen, openToAgents, pidsMatching, readSse, sandbox, startServer, testEnv, toolResults } from '../helper.js'

/**
 * Tools for runs through a real server and the real CLI: an operator's stdio MCP server (a small
 * one of the test's own) named by a request, its tools under permission rules like any tool, the
 * servers listed without their secrets, inline remote servers only to allowed hosts, subagents
 * defined in the request, and the model options.
 */

const MCP = join(import.meta.dirname, '..', 'fixtures', 'mcp-server.mjs')
const KEYS = { alice: 'cca_alice-0123456789abcdefghijklmnopqrstuv', bob: 'cca_bob-0123456789abcdefghijklmnopqrstuvwxy' }

/**
 * The fixture server as a command: under tap every process the server starts inherits tap's
 * NODE_OPTIONS (its process-info hook, below the repository), which a sandbox whose /tmp is its
 * own (a clone there) hides: the server's node starts without it.
 */
const node = (script: string): { command: string, args: string[] } => ({ command: '/usr/bin/env', args: ['-u', 'NODE_OPTIONS', process.execPath, script] })

function mcpConfig (dir: string, script: string, extra: Record<string, unknown> = {}): string {
  const path = join(dir, 'mcp.json')
  writeFileSync(path, JSON.stringify({
    mcpServers: {
      calc: { ...node(script), env: { GREETING: 'hello-from-config' } },
      broken: { ...node(script), env: { FAIL_AT_START: '1' } },
      slow: { ...node(script), env: { START_DELAY_MS: '8000' } },
      remote: { type: 'http', url: 'https://mcp.example.com/mcp?token=SECRET-IN-URL', headers: { Authorization: 'Bearer SECRET-HEADER' } },
      ...extra
    }
  }))
  return path
}

async function server (t: Parameters<typeof build>[0]) {
  const box = sandbox(t)
  const keys = keysFile(box, {
    alice: { key: KEYS.alice, scopes: ['runs:write', 'runs:read'] },
    bob: { key: KEYS.bob, scopes: ['runs:write', 'runs:read'], mcp_servers: [] }
  })
  const built = await build(t, { box, env: { API_KEYS_FILE: keys, MCP_CONFIG_FILE: mcpConfig(box.home, MCP), MCP_ALLOWED_HOSTS: 'mcp.allowed.example' } })
  const base = await listen(built.app)
  const post = async (key: string, path: string, body: object): Promise<Response> =>
    await fetch(`${base}${path}`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body: JSON.stringify(body) })
  return { ...built, base, post }
}

test('an MCP server a run names: listed without secrets, its tool called, under the permission rules; not there unasked', async t => {
  const { base, model, post } = await server(t)
  const listed = await (await fetch(`${base}/api/mcp-servers`, { headers: { 'x-api-key': KEYS.alice } })).json() as any
  t.same(listed.mcp_servers, [{ name: 'broken', transport: 'stdio' }, { name: 'calc', transport: 'stdio' }, { name: 'remote', transport: 'http' }, { name: 'slow', transport: 'stdio' }])
  t.notMatch(JSON.stringify(listed), /SECRET|hello-from-config|mcp-server\.mjs|example\.com\/mcp/, 'no command, argument, env, URL or header')
  const bobs = await (await fetch(`${base}/api/mcp-servers`, { headers: { 'x-api-key': KEYS.bob } })).json() as any
  t.same(bobs.mcp_servers, [], 'a key limited to none sees none')
  const models = await (await fetch(`${base}/api/models`, { headers: { 'x-api-key': KEYS.alice } })).json() as any
  t.ok(models.models.some((m: any) => m.id === 'sonnet' && typeof m.resolved === 'string'), 'the models runs may use: the CLI\'s own list')

  model.on('add two and three', [{ tool: 'mcp__calc__add', input: { a: 2, b: 3 } }, { text: 'five' }])
  const res = await post(KEYS.alice, '/api/execute/stream', { prompt: 'add two and three', mcp_servers: ['calc'], allowed_tools: ['mcp__calc__add'] })
  const { events } = await readSse(res)
  const result = JSON.parse(events.at(-1)!.data)
  t.equal(result.status, 'succeeded', result.error)
  t.match(toolResults(model.calls).at(-1), /sum=5/, 'the model got the MCP tool\'s answer')
  t.ok(model.calls[0]?.body.tools?.some((x: any) => x.name === 'mcp__calc__add'), 'its tools are offered directly, from the first turn')
  const init = events.map(e => { try { return JSON.parse(e.data) } catch { return null } }).find(m => m?.type === 'system' && m?.subtype === 'init')
  t.match(init?.mcp_servers, [{ name: 'calc', status: 'connected' }], 'the run\'s init lists the server as connected')
  t.ok(await eventually(() => pidsMatching(MCP).length === 0), 'the MCP server\'s process is gone with the run')

  model.on('add without leave', [{ tool: 'mcp__calc__add', input: { a: 1, b: 1 } }, { text: 'could not' }])
  const denied = await (await post(KEYS.alice, '/api/execute', { prompt: 'add without leave', mcp_servers: ['calc'] })).json() as any
  t.match(denied.permission_denials, [{ tool_name: 'mcp__calc__add' }], 'not allowed: refused like any tool that needs permission')

  model.on('add unasked', [{ tool: 'mcp__calc__add', input: { a: 1, b: 1 } }, { text: 'no such tool' }])
  const unasked = await (await post(KEYS.alice, '/api/execute', { prompt: 'add unasked', allowed_tools: ['mcp__calc__add'] })).json() as any
  t.equal(unasked.status, 'succeeded')
  t.notOk(model.calls.filter(c => c.prompt === 'add unasked')[0]?.body.tools?.some((x: any) => String(x.name).startsWith('mcp__calc')), 'a run that does not name it has none of its tools')
  t.notMatch(toolResults(model.calls.filter(c => c.prompt === 'add unasked')).join(' '), /sum=/)

  model.on('with a broken server', [{ text: 'still fine' }])
  const broken = await post(KEYS.alice, '/api/execute/stream', { prompt: 'with a broken server', mcp_servers: ['broken', 'calc'] })
  const brokenEvents = (await readSse(broken)).events
  t.equal(JSON.parse(brokenEvents.at(-1)!.data).status, 'succeeded', 'a failing server is not a failed run')
  const brokenInit = brokenEvents.map(e => { try { return JSON.parse(e.data) } catch { return null } }).find(m => m?.type === 'system' && m?.subtype === 'init')
  t.ok(brokenInit, 'the run has its init')
  t.not(brokenInit?.mcp_servers?.find((s: any) => s.name === 'broken')?.status, 'connected', `the run's init does not list it as connected (${JSON.stringify(brokenInit?.mcp_servers)}; ${brokenEvents.filter(e => e.data.includes('"init"')).length} inits; ids ${brokenEvents.map(e => e.id).join(',')})`)
  const why = brokenEvents.map(e => { try { return JSON.parse(e.data) } catch { return null } }).find(m => m?.type === 'system' && m?.subtype === 'mcp_status')
  t.match(why?.mcp_servers?.find((s: any) => s.name === 'broken'), { status: 'failed', error: /\S/ }, `and why, in an mcp_status message (${JSON.stringify(why)})`)
})

test('a server slow to start (8 s) still has its tools in the first turn', async t => {
  const { post, model } = await server(t)
  model.on('add slowly', [{ tool: 'mcp__slow__add', input: { a: 4, b: 4 } }, { text: 'eight' }])
  const r = await (await post(KEYS.alice, '/api/execute', { prompt: 'add slowly', mcp_servers: ['slow'], allowed_tools: ['mcp__slow'] })).json() as any
  t.equal(r.status, 'succeeded', r.error)
  t.match(toolResults(model.calls).at(-1), /sum=8/)
})

test('refused: an unknown name (400), one the key may not use, an inline host not allowed (403); inline headers never shown', async t => {
  const { post, base } = await server(t)
  const unknown = await post(KEYS.alice, '/api/runs', { prompt: 'x', mcp_servers: ['nope'] })
  t.equal(unknown.status, 400)
  t.match(await unknown.json(), { errors: [{ path: '/mcp_servers/0' }] })
  const forbidden = await post(KEYS.bob, '/api/runs', { prompt: 'x', mcp_servers: ['calc'] })
  t.equal(forbidden.status, 403)
  t.match(await forbidden.json(), { code: 'mcp_server_forbidden' })
  const host = await post(KEYS.alice, '/api/runs', { prompt: 'x', mcp_servers: [{ name: 'mine', type: 'http', url: 'https://evil.example/mcp' }] })
  t.equal(host.status, 403)
  const creds = await post(KEYS.alice, '/api/runs', { prompt: 'x', mcp_servers: [{ name: 'mine', type: 'http', url: 'https://u:p@mcp.allowed.example/mcp' }] })
  t.equal(creds.status, 400)
  const bad = await post(KEYS.alice, '/api/runs', { prompt: 'x', effort: 'extreme' })
  t.equal(bad.status, 400)
  t.match(await bad.json(), { errors: [{ path: '/effort' }] })
  const badAgent = await post(KEYS.alice, '/api/runs', { prompt: 'x', agents: { reviewer: { description: 'd' } } })
  t.equal(badAgent.status, 400, 'a subagent needs its prompt')

  const inline = await post(KEYS.alice, '/api/runs', { prompt: 'x', mcp_servers: [{ name: 'mine', type: 'http', url: 'https://mcp.allowed.example/mcp', headers: { Authorization: 'Bearer CLIENT-SECRET' } }], effort: 'low', fallback_model: 'sonnet' })
  t.equal(inline.status, 202)
  const run = await inline.json() as any
  const stored = await (await fetch(`${base}/api/runs/${run.id as string}`, { headers: { 'x-api-key': KEYS.alice } })).json() as any
  t.match(stored.request, { effort: 'low', fallback_model: 'sonnet', mcp_servers: [{ name: 'mine', headers: { Authorization: '[redacted]' } }] }, 'recorded in the stored request')
  t.notMatch(JSON.stringify(stored), /CLIENT-SECRET/, 'the header\'s value is never shown')
})

test('a subagent the request defines is what the Agent tool runs', async t => {
  const { post, model } = await server(t)
  model.on('get this reviewed', [{ tool: 'Agent', input: { description: 'review', prompt: 'review the file now', subagent_type: 'reviewer' } }, { text: 'reviewed' }])
  model.on('review the file now', [{ text: 'LGTM from the reviewer' }])
  const r = await (await post(KEYS.alice, '/api/execute', {
    prompt: 'get this reviewed',
    agents: { reviewer: { description: 'Reviews code for bugs', prompt: 'You are REVIEWER-SEVEN, a careful code reviewer.', tools: ['Read'] } },
    allowed_tools: ['Agent', 'Task']
  })).json() as any
  t.equal(r.status, 'succeeded', r.error)
  const sub = model.calls.find(c => c.prompt === 'review the file now')
  t.ok(sub !== undefined, 'the subagent ran')
  t.match(JSON.stringify(sub?.body.system ?? ''), /REVIEWER-SEVEN/, 'with the prompt the request gave it')
  t.notMatch(JSON.stringify(model.calls[0]?.body.system ?? ''), /REVIEWER-SEVEN/, 'which is the subagent\'s, not the agent\'s')
})

const root = process.getuid?.() === 0
test('as root, in the sandbox: the MCP server runs as the key\'s identity, with the operator\'s env and none of the server\'s secrets, and ends with the run', { skip: root ? false : 'agent identities need root (CI runs as root)' }, async t => {
  const box = sandbox(t, '/var/tmp')
  const model = await fakeModel(t)
  const base = openToAgents(box)
  // Where the identity can read it: the agents' own directory tree is open to them.
  const script = join(base, 'mcp-server.mjs')
  copyFileSync(MCP, script)
  const keys = keysFile(box, { alice: { key: KEYS.alice, scopes: ['runs:write', 'runs:read'] } })
  const srv = await startServer(t, testEnv(box, model, {
    ISOLATION: 'sandbox',
    AGENTS_DIR: join(base, 'agents'),
    AGENT_UID_BASE: String(25_000 + (process.pid % 1000) * 10),
    API_KEYS_FILE: keys,
    CLAUDE_API_KEY: 'server-admin-key-secret',
    MCP_CONFIG_FILE: mcpConfig(base, script)
  }))
  model.on('who runs the server', [{ tool: 'mcp__calc__whoami', input: {} }, { text: 'told' }])
  const r = await (await fetch(`${srv.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': KEYS.alice, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'who runs the server', mcp_servers: ['calc'], allowed_tools: ['mcp__calc__whoami'] }) })).json() as any
  t.equal(r.status, 'succeeded', r.error)
  const said = toolResults(model.calls).at(-1) ?? ''
  const uid = Number(/uid=(\d+)/.exec(said)?.[1])
  t.ok(uid >= 25_000, `the MCP server ran as the key's identity (${said})`)
  t.match(said, /GREETING=hello-from-c/, 'with the env the operator gave it')
  t.match(said, /CLAUDE_API_KEY=-/, 'none of the server\'s secrets')
  t.notMatch(said, /server-admin/)
  t.ok(await eventually(() => pidsMatching(script).length === 0), 'and it is gone after the run')
})
