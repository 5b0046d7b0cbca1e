import { test } from 'tap'
import { execFile } from 'node:child_process'
import { mkdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse as parseYaml } from 'yaml'
import { sha256Hex } from '../../src/auth/keys.js'
import { build, fakeModel, sandbox, startServer, testEnv } from '../helper.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

interface Ran { code: number, stdout: string, stderr: string }

/** Run `scripts/keys.ts` as an operator would (through tsx, from the repository root). */
async function keys (...args: string[]): Promise<Ran> {
  return await keysWith({}, ...args)
}

/** The same, with extra environment (API_KEYS_FILE). */
async function keysWith (env: Record<string, string>, ...args: string[]): Promise<Ran> {
  return await new Promise(resolve => {
    execFile(process.execPath, ['--import', 'tsx', 'scripts/keys.ts', ...args], { cwd: ROOT, timeout: 30_000, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : (typeof err.code === 'number' ? err.code : -1), stdout, stderr })
    })
  })
}

/** Run `scripts/keys.ts` from another directory, as an operator in their own checkout would, without API_KEYS_FILE. */
async function keysIn (cwd: string, ...args: string[]): Promise<Ran> {
  const { API_KEYS_FILE: _unset, ...env } = process.env
  return await new Promise(resolve => {
    execFile(process.execPath, ['--import', import.meta.resolve('tsx'), join(ROOT, 'scripts', 'keys.ts'), ...args], { cwd, timeout: 30_000, env }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : (typeof err.code === 'number' ? err.code : -1), stdout, stderr })
    })
  })
}

test('keys CLI: add prints the key once and stores only its hash; list, remove; the app accepts the key', async t => {
  const box = sandbox(t)
  const file = join(box.home, 'keys.yaml')

  const added = await keys('add', 'ci-bot', '--scopes', 'runs:read', '--rate-limit', '10', '--file', file)
  t.equal(added.code, 0, added.stderr)
  const found = [...added.stdout.matchAll(/cca_[A-Za-z0-9_-]{43}/g)].map(m => m[0])
  t.equal(found.length, 1, 'the key is printed exactly once')
  const key = found[0]!
  t.match(added.stdout, /ci-bot/)
  t.match(added.stdout, /only now/, 'says it will not be shown again')

  const text = readFileSync(file, 'utf8')
  t.ok(text.includes(sha256Hex(key)), 'the file holds the key\'s sha256')
  t.notOk(text.includes(key), 'and not the key')
  t.notOk(text.includes(key.slice(4)), 'not even without its prefix')
  t.same(parseYaml(text), { keys: [{ name: 'ci-bot', key_sha256: sha256Hex(key), scopes: ['runs:read'], rate_limit_per_min: 10 }] }, 'YAML, as the key file schema has it')
  t.equal(statSync(file).mode & 0o777, 0o600, 'readable by its owner only')

  const listed = await keys('list', '--file', file)
  t.equal(listed.code, 0)
  t.equal(listed.stdout, 'ci-bot\truns:read\trate_limit_per_min=10\n')
  t.notOk(listed.stdout.includes(key) || listed.stdout.includes(sha256Hex(key)), 'list shows neither key nor hash')

  const again = await keys('add', 'ci-bot', '--file', file)
  t.equal(again.code, 2, 'adding the same name again fails with exit code 2')
  t.match(again.stderr, /ci-bot exists already/)
  t.equal(again.stdout, '', 'and prints no key')
  t.equal(readFileSync(file, 'utf8'), text, 'the file is unchanged')

  const other = await keys('add', 'deployer', '--max-concurrent', '2', '--daily-budget', '1.5', '--file', file)
  t.equal(other.code, 0, other.stderr)
  const otherKey = /cca_[A-Za-z0-9_-]{43}/.exec(other.stdout)![0]
  t.not(otherKey, key, 'every key is new')
  t.equal((await keys('list', '--file', file)).stdout,
    'ci-bot\truns:read\trate_limit_per_min=10\ndeployer\truns:write,runs:read\tmax_concurrent_runs=2 daily_budget_usd=1.5\n',
    'default scopes runs:write,runs:read; limits listed')

  // The server takes the file as it is.
  const { app } = await build(t, { box, env: { API_KEYS_FILE: file } })
  t.equal((await app.inject({ url: '/api/runs', headers: { 'x-api-key': key } })).statusCode, 200, 'ci-bot may read')
  const run = await app.inject({ method: 'POST', url: '/api/execute', headers: { authorization: `Bearer ${key}` }, payload: { prompt: 'hi' } })
  t.equal(run.statusCode, 403, 'but not run')
  t.equal(run.json().code, 'insufficient_scope')
  t.match(run.json().detail, /ci-bot.*runs:write/)
  t.equal((await app.inject({ method: 'POST', url: '/api/execute', headers: { 'x-api-key': otherKey }, payload: {} })).statusCode, 400, 'deployer may run (past auth: the empty body is a 400)')
  t.equal((await app.inject({ url: '/api/runs', headers: { 'x-api-key': sha256Hex(key) } })).statusCode, 401, 'the hash in the file is not a key')

  const removed = await keys('remove', 'ci-bot', '--file', file)
  t.equal(removed.code, 0, removed.stderr)
  t.match(removed.stdout, /Removed key ci-bot/)
  t.equal((await keys('list', '--file', file)).stdout, 'deployer\truns:write,runs:read\tmax_concurrent_runs=2 daily_budget_usd=1.5\n')
  t.notOk(readFileSync(file, 'utf8').includes(sha256Hex(key)), 'its hash is gone from the file')
  const gone = await keys('remove', 'ci-bot', '--file', file)
  t.equal(gone.code, 2, 'removing it again fails')
  t.match(gone.stderr, /no key named ci-bot/)

  await app.close()
  const { app: restarted } = await build(t, { box, env: { API_KEYS_FILE: file } })
  t.equal((await restarted.inject({ url: '/api/runs', headers: { 'x-api-key': key } })).statusCode, 401, 'after a restart the removed key is refused')
  t.equal((await restarted.inject({ url: '/api/runs', headers: { 'x-api-key': otherKey } })).statusCode, 200, 'the other one still works')
})

test('keys CLI: bad input exits 2 with a message and writes nothing', async t => {
  const box = sandbox(t)
  const file = join(box.home, 'keys.json')
  const cases: Array<[string[], RegExp]> = [
    [['add', 'x', '--scopes', 'runs:read,runs:delete'], /unknown scope runs:delete/],
    [['add', 'bad name!'], /usage: keys add NAME/],
    [['add'], /usage: keys add NAME/],
    [['add', 'x', '--rate-limit', '0'], /--rate-limit must be a positive integer/],
    [['add', 'x', '--max-concurrent', '1.5'], /--max-concurrent must be a positive integer/],
    [['add', 'x', '--daily-budget=-1'], /--daily-budget must be a positive number/],
    [['add', 'x', '--daily-budget', 'lots'], /--daily-budget must be a positive number/],
    [['remove'], /usage: keys remove NAME/],
    [['frobnicate'], /unknown command frobnicate\n\nManage the server's named API keys/]
  ]
  for (const [args, message] of cases) {
    const ran = await keys(...args, '--file', file)
    t.equal(ran.code, 2, args.join(' '))
    t.match(ran.stderr, message)
    t.notMatch(ran.stdout, /cca_/, 'no key printed')
  }
  t.throws(() => statSync(file), 'no file was written')

  const added = await keys('add', 'json-key', '--file', file)
  t.equal(added.code, 0)
  const parsed = JSON.parse(readFileSync(file, 'utf8'))
  t.equal(parsed.keys[0].name, 'json-key', 'a .json path is written as JSON')
})

test('keys CLI: options it cannot parse exit 2 with a one-line message, not a stack trace', async t => {
  const box = sandbox(t)
  const file = join(box.home, 'keys.json')
  for (const args of [['add', 'x', '--scope', 'runs:read'], ['add', 'x', '--daily-budget', '-1']]) {
    const ran = await keys(...args, '--file', file)
    t.equal(ran.code, 2, args.join(' '))
    t.notMatch(ran.stderr, /\n\s+at /, 'no stack trace')
  }
})

test('keys CLI: --help explains every command and scope and exits 0; list and add honour API_KEYS_FILE', async t => {
  const help = await keys('--help')
  t.equal(help.code, 0, '--help is not an error')
  for (const word of ['add NAME', 'list', 'remove NAME', 'runs:write', 'runs:read', 'runs:read_all', 'admin', 'API_KEYS_FILE']) t.match(help.stdout, word)
  t.equal(help.stderr, '')

  const box = sandbox(t)
  const file = join(box.home, 'server-keys.json')
  const missing = await keysWith({ API_KEYS_FILE: file }, 'list')
  t.equal(missing.code, 2, 'list of a file that does not exist is an error')
  t.match(missing.stderr, new RegExp(`no key file at ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`), 'naming the file the server would read')

  const added = await keysWith({ API_KEYS_FILE: file }, 'add', 'dashboard', '--scopes', 'runs:read_all')
  t.equal(added.code, 0, added.stderr)
  t.match(added.stdout, `to ${file}`, 'add writes to API_KEYS_FILE')
  const listed = await keysWith({ API_KEYS_FILE: file }, 'list')
  t.equal(listed.stdout, 'dashboard\truns:read_all\t\n', 'list reads API_KEYS_FILE')
})

test('keys CLI: add with no --file and no API_KEYS_FILE writes ./api-keys.json (0600), which a server started there reads', async t => {
  const box = sandbox(t)
  const model = await fakeModel(t)
  const checkout = join(box.outside, 'checkout')
  mkdirSync(checkout)
  const added = await keysIn(checkout, 'add', 'first-bot')
  t.equal(added.code, 0, added.stderr)
  const key = /cca_[A-Za-z0-9_-]{43}/.exec(added.stdout)![0]
  const file = join(checkout, 'api-keys.json')
  t.match(added.stdout, 'to api-keys.json')
  t.equal(statSync(file).mode & 0o777, 0o600, 'the keys file is its owner\'s only')
  t.notMatch(added.stdout, /does not read/, 'no variable to set: the server reads this file by default')
  const elsewhere = await keysIn(checkout, 'add', 'other', '--file', join(box.home, 'other-keys.json'))
  t.match(elsewhere.stdout, `start it with API_KEYS_FILE=${join(box.home, 'other-keys.json')}`, 'a file the server would not read is named with what to set')

  // `npm start` in that directory, API_KEYS_FILE unset.
  const env = testEnv(box, model)
  t.equal(env.API_KEYS_FILE, undefined)
  const server = await startServer(t, env, checkout)
  t.match(server.output(), `named keys from ${file}`, 'the log says which file it read')
  const res = await fetch(`${server.base}/api/runs`, { headers: { 'x-api-key': key } })
  t.equal(res.status, 200, 'the new key is accepted')
  t.equal((await fetch(`${server.base}/api/runs`, { headers: { 'x-api-key': 'cca_not-a-key' } })).status, 401, 'and nothing else is')
})
