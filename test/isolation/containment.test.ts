import { test } from 'tap'
import { chmodSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { realpathSync } from 'node:fs'
import { defaultCliPath } from '../../src/engine/launch.js'
import { eventually, fakeModel, keysFile as writeKeys, noWarmSpares, pidsMatching, sandbox, startServer, testEnv, toolResults, openToAgents } from '../helper.js'

/**
 * At `uid` (the Docker image's level: no PID namespace), what a run starts must not outlive it,
 * and a server that cannot launch its CLI as an identity says so in /health. As root, as CI runs.
 */
const skip = process.getuid?.() !== 0 ? 'agent identities need root (CI runs as root)' : false
/** Live processes whose command line is exactly `cmd` (not a shell that mentions it). */
const exactly = (cmd: string): number[] => pidsMatching(cmd).filter(pid => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim() === cmd
  } catch {
    return false
  }
})

const KEY = 'cca_alice-0123456789abcdefghijklmnopqrstuv'

async function uidServer (t: Parameters<typeof sandbox>[0], offset: number, extra: Record<string, string> = {}, box = sandbox(t)) {
  const model = await fakeModel(t)
  const base = openToAgents(box)
  const keys = writeKeys(box, { alice: { key: KEY, scopes: ['runs:write', 'runs:read'] } })
  const env = testEnv(box, model, { ISOLATION: 'uid', AGENTS_DIR: join(base, 'agents'), AGENT_UID_BASE: String(offset + (process.pid % 1000) * 10), API_KEYS_FILE: keys, ...extra })
  const server = await startServer(t, env)
  const run = async (body: object): Promise<any> =>
    await (await fetch(`${server.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/json' }, body: JSON.stringify(body) })).json()
  return { box, model, env, server, run, base }
}

test('at uid, processes a run detaches and strips of its marker are gone within seconds of its end, and at the next start', { skip }, async t => {
  const { model, run, env, server } = await uidServer(t, 28_000)
  t.teardown(() => { for (const p of [...pidsMatching('sleep 3631'), ...pidsMatching('sleep 3632'), ...pidsMatching('sleep 3633')]) process.kill(p, 'SIGKILL') })
  model.on('detach then end', [
    { tool: 'Bash', input: { command: 'env -i setsid nohup sleep 3631 > /dev/null 2>&1 & (bash -c "exec -c sleep 3632" > /dev/null 2>&1 &); echo started' } },
    { text: 'left them running' }
  ])
  const result = await run({ prompt: 'detach then end', allowed_tools: ['Bash'] })
  t.equal(result.status, 'succeeded', result.error)
  t.ok(await eventually(() => pidsMatching('sleep 3631').length === 0 && pidsMatching('sleep 3632').length === 0, 5000), 'the detached, env-cleared processes are gone')

  // A server killed mid-run leaves such a process waiting: the next start ends it before it listens.
  model.on('detach then wait', [
    { tool: 'Bash', input: { command: 'env -i setsid nohup sleep 3633 > /dev/null 2>&1 & tail -f /dev/null' } },
    { text: 'never' }
  ])
  void run({ prompt: 'detach then wait', allowed_tools: ['Bash'] }).catch(() => {})
  t.ok(await eventually(() => exactly('sleep 3633').length === 1, 15_000), 'setup: the escapee runs')
  server.child.kill('SIGKILL')
  await server.exited
  t.equal(exactly('sleep 3633').length, 1, 'setup: it outlived the server')
  await startServer(t, env)
  t.equal(exactly('sleep 3633').length, 0, 'the restarted server ended it before it listened')
})

test('a CLI the identities cannot launch: /health degraded with the reason, until a launch works again', { skip }, async t => {
  const box = sandbox(t)
  // A CLI only root may execute: the probe (as the server) finds it, an identity cannot start it.
  const cli = join(box.home, 'claude-wrapper')
  writeFileSync(cli, `#!/bin/sh\nexec ${realpathSync(defaultCliPath())} "$@"\n`)
  chmodSync(cli, 0o700)
  const { run, server } = await uidServer(t, 29_000, { CLAUDE_CODE_PATH: cli }, box)
  const health = async (): Promise<any> => await (await fetch(`${server.base}/health`)).json()
  t.ok(await eventually(async () => (await health()).isolation.error !== undefined, 15_000), 'the self-check found it')
  let h = await health()
  t.equal(h.status, 'degraded')
  t.equal(h.claude_code_available, true, 'the CLI itself is there')
  t.match(h.isolation.error, /cannot start as an agent identity.*(EACCES|Permission denied)/, `a reason to act on: ${String(h.isolation.error)}`)
  const failed = await run({ prompt: 'hello' })
  t.equal(failed.success, false, 'runs fail meanwhile')

  chmodSync(cli, 0o755)
  const ok = await run({ prompt: 'hello' })
  t.equal(ok.success, true, `a launch works again (${String(ok.error)})`)
  h = await health()
  t.equal(h.status, 'healthy', 'and /health says so')
  t.equal(h.isolation.error, undefined)
})

test('a parked spare\'s token, read from /proc by a run of the same identity, gets nothing', { skip: skip !== false ? skip : noWarmSpares }, async t => {
  const { model, run, server } = await uidServer(t, 30_000, { WARM_SPARES: '1' })
  const first = await run({ prompt: 'hello' })
  t.equal(first.success, true, first.error)
  t.ok(await eventually(async () => (await (await fetch(`${server.base}/health`)).json() as any).warm.parked === 1, 60_000), 'setup: a spare is parked for alice')
  const steal = [
    'for f in /proc/[0-9]*/environ; do cat $f 2>/dev/null | tr "\\0" "\\n" | grep "^ANTHROPIC_API_KEY=sk-ant-run-"; done | cut -d= -f2 | sort -u > tokens',
    'echo "FOUND:$(grep -cv "^$ANTHROPIC_API_KEY$" tokens)"',
    'for k in $(grep -v "^$ANTHROPIC_API_KEY$" tokens); do curl -s -o /dev/null -w "USED:%{http_code}\\n" -H "x-api-key: $k" -H "content-type: application/json" --data \'{"model":"claude-x","max_tokens":5,"messages":[{"role":"user","content":"stolen call"}]}\' "$ANTHROPIC_BASE_URL/v1/messages"; done'
  ].join('; ')
  model.on('steal the spare token', [{ tool: 'Bash', input: { command: steal } }, { text: 'tried' }])
  // A system prompt: the spare cannot take this run, which starts cold beside it.
  const thief = await run({ prompt: 'steal the spare token', allowed_tools: ['Bash'], append_system_prompt: 'be brief' })
  t.equal(thief.success, true, thief.error)
  const out = toolResults(model.calls).at(-1) ?? ''
  t.match(out, /FOUND:[1-9]/, 'the run found the spare\'s token in /proc')
  t.match(out, /USED:401/, 'and the broker refused it')
  t.notMatch(out, /USED:200/)
  t.notOk(model.calls.some(c => c.userTexts.includes('stolen call')), 'nothing reached the model')
})
