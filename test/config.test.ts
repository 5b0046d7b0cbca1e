import { test } from 'tap'
import { mkdirSync, mkdtempSync, readdirSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Value } from '@sinclair/typebox/value'
import { ConfigError, ConfigSchema, toSettings, type RawConfig } from '../src/config.js'
import { PACKAGE_ROOT } from '../src/package-info.js'

/** A real temp directory with `work` and `other` below it, removed at the end. */
function base (t: { teardown: (fn: () => void) => void }): string {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'ccapi-config-')))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  mkdirSync(join(dir, 'work'))
  mkdirSync(join(dir, 'other'))
  return dir
}

/** The schema's defaults, with `over` on top: what `@fastify/env` would hand over. */
const raw = (over: Partial<RawConfig> = {}): RawConfig => Value.Default(ConfigSchema, { ...over }) as RawConfig

test('the defaults make sense on their own', async t => {
  const dir = base(t)
  const s = toSettings(raw(), { PATH: '/usr/bin' }, dir)
  t.equal(s.defaultWorkingDir, join(dir, 'workspace'), 'runs execute in ./workspace, not the server\'s cwd')
  t.ok(statSync(join(dir, 'workspace')).isDirectory(), 'created at first start')
  t.same(readdirSync(join(dir, 'workspace')), [], 'and empty')
  t.same(s.allowedRoots, [join(dir, 'workspace')], 'ALLOWED_WORKING_DIRS defaults to DEFAULT_WORKING_DIR')
  t.equal(s.defaultPermissionMode, 'acceptEdits')
  t.same(s.allowedPermissionModes, ['default', 'acceptEdits', 'plan', 'dontAsk'])
  t.notOk(s.allowedPermissionModes.includes('bypassPermissions'), 'bypassPermissions only when listed')
  t.equal(s.defaultTimeoutS, 300)
  t.equal(s.maxTimeoutS, 3600)
  t.equal(s.maxConcurrentRuns, 4)
  t.equal(s.maxQueuedRuns, 32)
  t.same(s.corsOrigins, [])
  t.same(s.passEnv, [])
  t.equal(s.enableAuth, true)
  t.equal(s.port, 8000)
  t.equal(s.dataDir, join(dir, 'data'))
  t.same(s.serverEnv, { PATH: '/usr/bin' })
})

test('ALLOWED_WORKING_DIRS defaults to DEFAULT_WORKING_DIR, resolved to its real path', async t => {
  const dir = base(t)
  symlinkSync(join(dir, 'work'), join(dir, 'link'))
  const s = toSettings(raw({ DEFAULT_WORKING_DIR: 'link' }), {}, dir)
  t.equal(s.defaultWorkingDir, join(dir, 'work'))
  t.same(s.allowedRoots, [join(dir, 'work')])
})

test('comma-separated lists are trimmed and empty entries dropped', async t => {
  const dir = base(t)
  const s = toSettings(raw({
    DEFAULT_WORKING_DIR: join(dir, 'work'),
    ALLOWED_WORKING_DIRS: ` ${join(dir, 'work')} ,, ${join(dir, 'other')} `,
    ALLOWED_PERMISSION_MODES: ' plan , acceptEdits ,',
    CORS_ORIGINS: ' https://a.example ,https://b.example,, ',
    PASS_ENV: 'FOO , BAR'
  }), {}, dir)
  t.same(s.allowedRoots, [join(dir, 'work'), join(dir, 'other')])
  t.same(s.allowedPermissionModes, ['plan', 'acceptEdits'])
  t.same(s.corsOrigins, ['https://a.example', 'https://b.example'])
  t.same(s.passEnv, ['FOO', 'BAR'])
})

test('DEFAULT_PERMISSION_MODE outside ALLOWED_PERMISSION_MODES is a ConfigError', async t => {
  const dir = base(t)
  t.throws(() => toSettings(raw({ DEFAULT_PERMISSION_MODE: 'acceptEdits', ALLOWED_PERMISSION_MODES: 'default,plan' }), {}, dir),
    { name: 'ConfigError', message: /DEFAULT_PERMISSION_MODE=acceptEdits is not in ALLOWED_PERMISSION_MODES/ })
  t.throws(() => toSettings(raw({ DEFAULT_PERMISSION_MODE: 'bypassPermissions' }), {}, dir), ConfigError,
    'bypassPermissions as default needs it listed')
  t.throws(() => toSettings(raw({ ALLOWED_PERMISSION_MODES: '' }), {}, dir), ConfigError, 'an empty list')
})

test('an unknown mode in ALLOWED_PERMISSION_MODES is a ConfigError naming it', async t => {
  const dir = base(t)
  t.throws(() => toSettings(raw({ ALLOWED_PERMISSION_MODES: 'acceptEdits,yolo' }), {}, dir),
    { name: 'ConfigError', message: /yolo/ })
  t.throws(() => toSettings(raw({ ALLOWED_PERMISSION_MODES: 'acceptEdits,AcceptEdits' }), {}, dir), ConfigError, 'names are case-sensitive')
})

test('DEFAULT_TIMEOUT above MAX_TIMEOUT is a ConfigError; equal is fine', async t => {
  const dir = base(t)
  t.throws(() => toSettings(raw({ DEFAULT_TIMEOUT: 4000, MAX_TIMEOUT: 3600 }), {}, dir),
    { name: 'ConfigError', message: /DEFAULT_TIMEOUT \(4000\) exceeds MAX_TIMEOUT \(3600\): lower DEFAULT_TIMEOUT/ })
  t.equal(toSettings(raw({ DEFAULT_TIMEOUT: 60, MAX_TIMEOUT: 60 }), {}, dir).maxTimeoutS, 60)
})

test('directories that do not exist are ConfigErrors', async t => {
  const dir = base(t)
  t.throws(() => toSettings(raw({ DEFAULT_WORKING_DIR: join(dir, 'missing') }), {}, dir),
    { name: 'ConfigError', message: /DEFAULT_WORKING_DIR/ })
  t.throws(() => toSettings(raw({ ALLOWED_WORKING_DIRS: `${join(dir, 'work')},${join(dir, 'gone')}` }), {}, dir),
    { name: 'ConfigError', message: /gone/ })
})

test('MAX_TIMEOUT alone below 300 starts: the default timeout follows it down', async t => {
  const dir = base(t)
  const s = toSettings(raw({ MAX_TIMEOUT: 120 }), {}, dir)
  t.equal(s.maxTimeoutS, 120)
  t.equal(s.defaultTimeoutS, 120, 'a request without timeout gets the maximum')
  t.equal(toSettings(raw({ MAX_TIMEOUT: 7200 }), {}, dir).defaultTimeoutS, 300, 'a higher maximum leaves the default at 300')
  t.equal(toSettings(raw({ MAX_TIMEOUT: 7200, DEFAULT_TIMEOUT: 60 }), {}, dir).defaultTimeoutS, 60, 'an explicit default wins')
})

test('DEFAULT_WORKING_DIR must lie inside ALLOWED_WORKING_DIRS', async t => {
  const dir = base(t)
  t.throws(() => toSettings(raw({ DEFAULT_WORKING_DIR: join(dir, 'other'), ALLOWED_WORKING_DIRS: join(dir, 'work') }), {}, dir),
    { name: 'ConfigError', message: /DEFAULT_WORKING_DIR=.*other.* is not inside ALLOWED_WORKING_DIRS \(.*work\): add it/ })
  mkdirSync(join(dir, 'work', 'project'))
  const s = toSettings(raw({ DEFAULT_WORKING_DIR: join(dir, 'work', 'project'), ALLOWED_WORKING_DIRS: join(dir, 'work') }), {}, dir)
  t.equal(s.defaultWorkingDir, join(dir, 'work', 'project'), 'a directory below a root is fine')
  t.throws(() => toSettings(raw({ ALLOWED_WORKING_DIRS: join(dir, 'work') }), {}, dir),
    { name: 'ConfigError', message: /DEFAULT_WORKING_DIR=workspace/ }, 'the default work area too')
})

test('an allowed root that holds the server\'s data, keys, .env or code refuses to start', async t => {
  const dir = base(t)
  t.throws(() => toSettings(raw({ DEFAULT_WORKING_DIR: dir }), {}, dir),
    { name: 'ConfigError', message: /contains DATA_DIR/ }, 'the server\'s cwd holds ./data')
  t.throws(() => toSettings(raw({ DEFAULT_WORKING_DIR: join(dir, 'work'), DATA_DIR: join(dir, 'work', 'data') }), {}, dir),
    { name: 'ConfigError', message: /ALLOWED_WORKING_DIRS includes .*work, which contains DATA_DIR/ })
  writeFileSync(join(dir, 'work', 'keys.json'), '{"keys":[]}')
  t.throws(() => toSettings(raw({ DEFAULT_WORKING_DIR: join(dir, 'work'), API_KEYS_FILE: join(dir, 'work', 'keys.json') }), {}, dir),
    { name: 'ConfigError', message: /contains API_KEYS_FILE/ })
  t.throws(() => toSettings(raw({ DEFAULT_WORKING_DIR: join(dir, 'work'), DATA_DIR: join(dir, 'data') }), {}, join(dir, 'work')),
    { name: 'ConfigError', message: /contains the server's \.env/ }, 'a root that is the server\'s cwd holds its .env')
  t.throws(() => toSettings(raw({ DEFAULT_WORKING_DIR: join(dir, 'work'), ALLOWED_WORKING_DIRS: `${join(dir, 'work')},${PACKAGE_ROOT}` }), {}, dir),
    { name: 'ConfigError', message: /contains the server's own code/ })
  symlinkSync(join(dir, 'data'), join(dir, 'work', 'data-link'))
  t.throws(() => toSettings(raw({ DEFAULT_WORKING_DIR: join(dir, 'work'), DATA_DIR: join(dir, 'work', 'data-link') }), {}, dir),
    { name: 'ConfigError', message: /contains DATA_DIR/ }, 'a DATA_DIR reached through a link inside a root')
  writeFileSync(join(dir, 'other', 'keys.json'), '{"keys":[]}')
  t.doesNotThrow(() => toSettings(raw({ DEFAULT_WORKING_DIR: join(dir, 'work'), DATA_DIR: join(dir, 'data'), API_KEYS_FILE: join(dir, 'other', 'keys.json') }), {}, join(dir, 'other')),
    'the same settings with everything of the server outside the root start')
})

test('an API_KEYS_FILE that does not exist stops the start, naming it and the fix', async t => {
  const dir = base(t)
  t.throws(() => toSettings(raw({ DEFAULT_WORKING_DIR: join(dir, 'work'), API_KEYS_FILE: 'missing-keys.json' }), {}, dir),
    { name: 'ConfigError', message: /API_KEYS_FILE=missing-keys\.json \(.*missing-keys\.json\) does not exist: create it with "npm run keys -- add NAME/ })
})

test('MCP_CONFIG_FILE: the .mcp.json format read once; a file that is missing or wrong names itself and where', async t => {
  const dir = base(t)
  const file = join(dir, 'mcp.json')
  writeFileSync(file, JSON.stringify({ mcpServers: { gh: { command: 'gh-mcp', args: ['--ro'], env: { T: 'x' } }, docs: { type: 'sse', url: 'https://docs.example/sse' } } }))
  const s = toSettings(raw({ MCP_CONFIG_FILE: file, MCP_ALLOWED_HOSTS: 'A.example, b.example:8443' }), {}, dir)
  t.same(s.mcpServers, { gh: { type: 'stdio', command: 'gh-mcp', args: ['--ro'], env: { T: 'x' } }, docs: { type: 'sse', url: 'https://docs.example/sse', headers: {} } })
  t.same(s.mcpAllowedHosts, ['a.example', 'b.example:8443'])
  t.same(toSettings(raw(), {}, dir).mcpServers, {}, 'none unless the operator names a file')
  t.throws(() => toSettings(raw({ MCP_CONFIG_FILE: join(dir, 'missing.json') }), {}, dir), { name: 'ConfigError', message: /MCP_CONFIG_FILE=.*missing\.json: cannot be read/ })
  writeFileSync(file, JSON.stringify({ mcpServers: { gh: { type: 'ws', url: 'x' } } }))
  t.throws(() => toSettings(raw({ MCP_CONFIG_FILE: file }), {}, dir), { name: 'ConfigError', message: /\/mcpServers\/gh\/type: stdio, http or sse/ })
  writeFileSync(file, JSON.stringify({ mcpServers: { 'bad name': { command: 'x' } } }))
  t.throws(() => toSettings(raw({ MCP_CONFIG_FILE: file }), {}, dir), { name: 'ConfigError', message: /mcpServers\/bad name: a name of letters/ })
})
