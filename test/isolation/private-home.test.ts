import { test } from 'tap'
import { chmodSync, copyFileSync, linkSync, mkdirSync, mkdtempSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { defaultCliPath } from '../../src/engine/launch.js'
import { findBwrap } from '../../src/isolation/sandbox.js'
import { fakeModel, serverThatFails, startServer, testEnv, toolResults, API_KEY, type Sandbox } from '../helper.js'

/**
 * The default root deployment in the shapes a root operator's machine has: a HOME closed to
 * others (0700, as /root is) holding the operator's own `~/.claude`, and the checkout itself
 * below it. Outside /tmp: inside the sandbox /tmp is private, which would hide the very shapes.
 */
const skip = process.getuid?.() !== 0 ? 'needs root (CI runs as root)' : findBwrap() === null && process.env.REQUIRE_SANDBOX !== '1' ? 'bubblewrap is not installed' : false

const SETTINGS = '{"env":{"OPERATOR_SECRET":"operator-settings-never-seen"}}'

/** A root-owned base under /var/tmp with an operator HOME (0700) holding `.claude/settings.json`. */
function operatorMachine (t: { teardown: (fn: () => unknown) => void }): { base: string, home: string } {
  const base = realpathSync(mkdtempSync('/var/tmp/ccapi-root-test-'))
  chmodSync(base, 0o755)
  t.teardown(() => rmSync(base, { recursive: true, force: true }))
  const home = join(base, 'root')
  mkdirSync(join(home, '.claude'), { recursive: true })
  writeFileSync(join(home, '.claude', 'settings.json'), SETTINGS)
  chmodSync(home, 0o700)
  return { base, home }
}

/** The server's environment as a root operator has it: no ISOLATION, the config in HOME. */
function rootEnv (box: Sandbox, model: Awaited<ReturnType<typeof fakeModel>>, home: string, extra: Record<string, string>): Record<string, string> {
  const env = testEnv(box, model, { HOME: home, ...extra })
  delete env.ISOLATION
  delete env.CLAUDE_CONFIG_DIR
  return env
}

const execute = async (base: string, body: object): Promise<any> =>
  await (await fetch(`${base}/api/execute`, { method: 'POST', headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' }, body: JSON.stringify(body) })).json()

test('as root with a private HOME holding ~/.claude, runs work at sandbox and never see that config', { skip }, async t => {
  const { base, home } = operatorMachine(t)
  const model = await fakeModel(t)
  const box = { home, work: join(base, 'work'), outside: join(base, 'outside') }
  mkdirSync(box.work, { mode: 0o755 })
  const env = rootEnv(box, model, home, { AGENTS_DIR: join(base, 'agents'), DATA_DIR: join(base, 'data'), AGENT_UID_BASE: String(26_000 + (process.pid % 1000) * 10) })
  const server = await startServer(t, env)
  const health = await (await fetch(`${server.base}/health`)).json() as any
  t.equal(health.isolation.level, 'sandbox', 'auto picks the sandbox as root')

  model.on('read the operator config', [
    { tool: 'Bash', input: { command: `cat ${join(home, '.claude', 'settings.json')} 2>&1; echo "[$OPERATOR_SECRET]"` } },
    { text: 'done' }
  ])
  const result = await execute(server.base, { prompt: 'read the operator config', allowed_tools: ['Bash'] })
  t.equal(result.status, 'succeeded', `the run works (${result.error ?? ''})`)
  const out = toolResults(model.calls).at(-1) ?? ''
  t.match(out, /No such file|Permission denied/, 'the operator\'s settings file is out of reach')
  t.notMatch(out, /operator-settings-never-seen/, 'and nothing of it reached the run')
  t.match(out, /\[\]/, 'the operator\'s settings did not configure the run')
})

test('as root with the checkout and the CLI below a private directory, auto still gives the sandbox and runs work', { skip }, async t => {
  const { base, home } = operatorMachine(t)
  const model = await fakeModel(t)
  // The clone: /root/app as root has it (work area, agents, store and CLI all below a 0700 HOME).
  const app = join(home, 'app')
  const box = { home, work: join(app, 'workspace'), outside: join(base, 'outside') }
  mkdirSync(join(app, 'bin'), { recursive: true })
  mkdirSync(box.work, { recursive: true })
  const cli = join(app, 'bin', 'claude')
  try {
    linkSync(realpathSync(defaultCliPath()), cli)
  } catch {
    copyFileSync(realpathSync(defaultCliPath()), cli)
    chmodSync(cli, 0o755)
  }
  const uid = 27_000 + (process.pid % 1000) * 10
  const env = rootEnv(box, model, home, { AGENTS_DIR: join(app, 'agents'), DATA_DIR: join(app, 'data'), CLAUDE_CODE_PATH: cli, AGENT_UID_BASE: String(uid) })

  const refused = await serverThatFails({ ...env, ISOLATION: 'uid' })
  t.equal(refused.code, 1, 'ISOLATION=uid cannot serve such a clone, and says so')
  t.match(refused.stderr + refused.stdout, /ISOLATION=uid: .* lies below .*ISOLATION=sandbox/)

  const server = await startServer(t, env)
  const health = await (await fetch(`${server.base}/health`)).json() as any
  t.equal(health.isolation.level, 'sandbox', 'auto gives the sandbox, not none')
  const own = join(box.work, 'default')
  model.on('write here', [
    { tool: 'Write', input: { file_path: join(own, 'hello.txt'), content: 'hi\n' } },
    { tool: 'Bash', input: { command: `id -u; ls -A ${home}; ls -A ${app}; cat ${join(home, '.claude', 'settings.json')} 2>&1` } },
    { text: 'written' }
  ])
  const result = await execute(server.base, { prompt: 'write here', allowed_tools: ['Bash'] })
  t.equal(result.status, 'succeeded', `the run works (${result.error ?? ''})`)
  const out = toolResults(model.calls).at(-1) ?? ''
  const agent = Number(/^(\d+)$/m.exec(out)?.[1])
  t.ok(agent >= uid, `the agent runs as its identity, not root (${agent})`)
  t.equal(statSync(join(own, 'hello.txt')).uid, agent, 'the file is written as the key\'s identity')
  t.notMatch(out, /\.claude\n|settings\.json\n|data\n/, 'the operator\'s HOME shows only the way to what the run needs')
  t.match(out, /No such file/, 'the operator\'s Claude config is not there')
})
