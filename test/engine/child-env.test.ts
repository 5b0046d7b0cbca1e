import { test } from 'tap'
import { buildChildEnv, refusedEnvName } from '../../src/engine/child-env.js'
import { RUN_MARKER_VAR } from '../../src/isolation/proc.js'

const DENIED = [
  'ANTHROPIC_API_KEY', 'ANTHROPIC_BASE_URL', 'CLAUDE_CODE_OAUTH_TOKEN', 'CLAUDE_CONFIG_DIR',
  'AWS_SECRET_ACCESS_KEY', 'GOOGLE_APPLICATION_CREDENTIALS', 'OTEL_EXPORTER_OTLP_ENDPOINT',
  'PATH', 'HOME', 'SHELL', 'BASH_ENV', 'ENV', 'LD_PRELOAD', 'DYLD_INSERT_LIBRARIES', 'NODE_OPTIONS',
  'BUN_OPTIONS', 'HTTPS_PROXY', 'http_proxy', 'SSL_CERT_FILE', 'GIT_SSH_COMMAND', 'GIT_CONFIG_GLOBAL',
  'TMPDIR', 'IS_SANDBOX', 'NODE_EXTRA_CA_CERTS', 'NODE_TLS_REJECT_UNAUTHORIZED', 'CLAUDE_API_RUN_MARKER',
  'PYTHONPATH'
]

test('every name on the contract\'s deny list is refused, with a reason naming it', async t => {
  for (const name of DENIED) {
    const why = refusedEnvName(name)
    t.type(why, 'string', `${name} is refused`)
    t.match(why ?? '', name, `the reason for ${name} names it`)
  }
})

test('case does not get a denied name through', async t => {
  for (const name of ['Ld_Preload', 'anthropic_api_key', 'Https_Proxy', 'path', 'node_options']) {
    t.type(refusedEnvName(name), 'string', `${name} is refused`)
  }
})

test('ordinary names pass', async t => {
  for (const name of ['MY_VAR', 'DEBUG', 'FOO_BAR', 'API_TOKEN', 'DATABASE_URL', 'PROJECT_ENV', 'CI']) {
    t.equal(refusedEnvName(name), null, `${name} is allowed`)
  }
})

const serverEnv = {
  PATH: '/usr/local/bin:/usr/bin',
  HOME: '/home/svc',
  ANTHROPIC_API_KEY: 'sk-operator',
  ANTHROPIC_BASE_URL: 'http://127.0.0.1:9',
  CLAUDE_CONFIG_DIR: '/home/svc/.claude',
  CLAUDE_CODE_OAUTH_TOKEN: 'oauth-operator',
  LC_ALL: 'C.UTF-8',
  CLAUDE_API_KEY: 'server-client-key',
  CLAUDE_CODE_PATH: '/opt/claude',
  SECRET_DB_PASSWORD: 'hunter2',
  ENABLE_AUTH: 'true',
  PORT: '8000',
  CLAUDE_SETTING_SOURCES: 'user',
  OPERATOR_EXTRA: 'passed on request',
  UNSET_ONE: undefined
}

test('buildChildEnv takes the operator\'s credentials and shell basics, never the server\'s own secrets', async t => {
  const env = buildChildEnv(serverEnv, {}, 'marker-1')
  t.equal(env.PATH, serverEnv.PATH)
  t.equal(env.HOME, serverEnv.HOME)
  t.equal(env.ANTHROPIC_API_KEY, 'sk-operator')
  t.equal(env.ANTHROPIC_BASE_URL, 'http://127.0.0.1:9')
  t.equal(env.CLAUDE_CONFIG_DIR, '/home/svc/.claude')
  t.equal(env.CLAUDE_CODE_OAUTH_TOKEN, 'oauth-operator')
  t.equal(env.LC_ALL, 'C.UTF-8')
  for (const name of ['CLAUDE_API_KEY', 'CLAUDE_CODE_PATH', 'SECRET_DB_PASSWORD', 'ENABLE_AUTH', 'PORT', 'CLAUDE_SETTING_SOURCES', 'OPERATOR_EXTRA', 'UNSET_ONE']) {
    t.notOk(name in env, `${name} stays out`)
  }
  t.notOk(Object.values(env).includes('server-client-key'), 'the server\'s API key appears under no name')
})

test('PASS_ENV names pass, but never the server\'s own API key', async t => {
  const env = buildChildEnv(serverEnv, {}, 'marker-2', ['OPERATOR_EXTRA', 'CLAUDE_API_KEY', 'NOT_SET_AT_ALL'])
  t.equal(env.OPERATOR_EXTRA, 'passed on request')
  t.notOk('CLAUDE_API_KEY' in env)
  t.notOk('NOT_SET_AT_ALL' in env)
})

test('the request\'s variables are added and the run marker is set', async t => {
  const env = buildChildEnv(serverEnv, { MY_VAR: 'x', DEBUG: '1' }, 'marker-3')
  t.equal(env.MY_VAR, 'x')
  t.equal(env.DEBUG, '1')
  t.equal(env[RUN_MARKER_VAR], 'marker-3')
  t.equal(RUN_MARKER_VAR, 'CLAUDE_API_RUN_MARKER')
})

test('a request cannot override the run marker', async t => {
  const env = buildChildEnv({ ...serverEnv, [RUN_MARKER_VAR]: 'server-own' }, { [RUN_MARKER_VAR]: 'forged' }, 'marker-4')
  t.equal(env[RUN_MARKER_VAR], 'marker-4')
})

test('the CLI never updates itself under the server', async t => {
  t.equal(buildChildEnv({}, {}, 'm').DISABLE_AUTOUPDATER, '1')
})
