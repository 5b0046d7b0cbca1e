import { test } from 'tap'
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Value } from '@sinclair/typebox/value'
import { ConfigSchema, toSettings, type RawConfig, type Settings } from '../../src/config.js'
import { DomainError } from '../../src/domain/errors.js'
import { STATUS_OF_CODE } from '../../plugins/problem.js'
import { checkEnvVars, checkPermissionMode, resolveWorkingDir } from '../../src/engine/policy.js'

interface Box { base: string, work: string, work2: string, outside: string }

/** Real temp directories: `work` is the allowed root; `work2` shares its name as a prefix. */
function box (t: { teardown: (fn: () => void) => void }): Box {
  const base = realpathSync(mkdtempSync(join(tmpdir(), 'ccapi-policy-')))
  t.teardown(() => rmSync(base, { recursive: true, force: true }))
  const dirs = { base, work: join(base, 'work'), work2: join(base, 'work2'), outside: join(base, 'outside') }
  for (const d of [dirs.work, dirs.work2, dirs.outside]) mkdirSync(d)
  return dirs
}

function settings (over: Partial<RawConfig>, cwd: string): Settings {
  const raw = Value.Default(ConfigSchema, { ...over }) as RawConfig
  return toSettings(raw, {}, cwd)
}

/** The rejection of `p`, as a problem error. */
async function refusal (t: { fail: (message: string) => unknown }, p: Promise<unknown>): Promise<DomainError & { statusCode: number }> {
  const err = await p.then(() => null, (e: DomainError) => e)
  if (err === null) {
    t.fail('expected a refusal')
    return Object.assign(new DomainError('none', ''), { statusCode: 0 })
  }
  // The status the API answers with for this error.
  return Object.assign(err, { statusCode: STATUS_OF_CODE[err.code] ?? 500 })
}

test('a directory inside the root passes and comes back as its real path', async t => {
  const b = box(t)
  mkdirSync(join(b.work, 'proj', 'sub'), { recursive: true })
  const s = settings({ DEFAULT_WORKING_DIR: b.work }, b.base)
  t.equal(await resolveWorkingDir(join(b.work, 'proj', 'sub'), s), join(b.work, 'proj', 'sub'))
  t.equal(await resolveWorkingDir('proj', s), join(b.work, 'proj'), 'relative to the default directory')
  t.equal(await resolveWorkingDir(join(b.work, 'proj', 'sub', '..'), s), join(b.work, 'proj'), '.. inside the root is fine')
  t.equal(await resolveWorkingDir(b.work, s), b.work, 'the root itself')
  t.equal(await resolveWorkingDir(undefined, s), b.work, 'none named: the default')
  symlinkSync(join(b.work, 'proj'), join(b.work, 'link'))
  t.equal(await resolveWorkingDir(join(b.work, 'link'), s), join(b.work, 'proj'), 'a symlink inside the root resolves')
})

test('root/../outside is refused 403 working_directory_forbidden', async t => {
  const b = box(t)
  const s = settings({ DEFAULT_WORKING_DIR: b.work }, b.base)
  const err = await refusal(t, resolveWorkingDir(`${b.work}/../outside`, s))
  t.equal(err.statusCode, 403)
  t.equal(err.code.toLowerCase(), 'working_directory_forbidden')
  t.match(err.message, 'outside the allowed roots')
  const rel = await refusal(t, resolveWorkingDir('../outside', s))
  t.equal(rel.statusCode, 403, 'relative escape too')
  const etc = await refusal(t, resolveWorkingDir('/etc', s))
  t.equal(etc.statusCode, 403)
})

test('a symlink inside the root that points outside is refused 403', async t => {
  const b = box(t)
  symlinkSync(b.outside, join(b.work, 'escape'))
  const s = settings({ DEFAULT_WORKING_DIR: b.work }, b.base)
  const err = await refusal(t, resolveWorkingDir(join(b.work, 'escape'), s))
  t.equal(err.statusCode, 403)
  t.equal(err.code.toLowerCase(), 'working_directory_forbidden')
})

test('a missing directory is 400 working_directory_not_found', async t => {
  const b = box(t)
  const s = settings({ DEFAULT_WORKING_DIR: b.work }, b.base)
  const err = await refusal(t, resolveWorkingDir(join(b.work, 'nope'), s))
  t.equal(err.statusCode, 400)
  t.equal(err.code.toLowerCase(), 'working_directory_not_found')
  t.match(err.problem, { errors: [{ path: '/working_directory' }] })
})

test('a file is not a working directory: 400', async t => {
  const b = box(t)
  writeFileSync(join(b.work, 'file.txt'), 'x')
  const s = settings({ DEFAULT_WORKING_DIR: b.work }, b.base)
  const err = await refusal(t, resolveWorkingDir(join(b.work, 'file.txt'), s))
  t.equal(err.statusCode, 400)
  t.equal(err.code.toLowerCase(), 'working_directory_not_found')
  t.match(err.message, 'not a directory')
})

test('a root does not grant a sibling whose name it prefixes', async t => {
  const b = box(t)
  const s = settings({ DEFAULT_WORKING_DIR: b.work }, b.base)
  const err = await refusal(t, resolveWorkingDir(b.work2, s))
  t.equal(err.statusCode, 403)
  t.equal(err.code.toLowerCase(), 'working_directory_forbidden')
})

test('several roots: each grants its own tree', async t => {
  const b = box(t)
  const s = settings({ DEFAULT_WORKING_DIR: b.work, ALLOWED_WORKING_DIRS: `${b.work}, ${b.outside}` }, b.base)
  t.equal(await resolveWorkingDir(b.outside, s), b.outside)
  t.equal((await refusal(t, resolveWorkingDir(b.work2, s))).statusCode, 403)
})

test('a directory whose name starts with ".." inside the root is allowed', async t => {
  const b = box(t)
  mkdirSync(join(b.work, '..cache'))
  const s = settings({ DEFAULT_WORKING_DIR: b.work }, b.base)
  t.equal(await resolveWorkingDir(join(b.work, '..cache'), s), join(b.work, '..cache'))
})

test('checkPermissionMode: the default when none is asked, bypassPermissions only when the operator allows it', async t => {
  const b = box(t)
  const s = settings({ DEFAULT_WORKING_DIR: b.work }, b.base)
  t.equal(checkPermissionMode(undefined, s), 'acceptEdits')
  t.equal(checkPermissionMode('plan', s), 'plan')
  const err = t.throws(() => checkPermissionMode('bypassPermissions', s)) as DomainError
  t.equal(STATUS_OF_CODE[err.code], 403)
  t.equal(err.code.toLowerCase(), 'permission_mode_forbidden')

  const custom = settings({ DEFAULT_WORKING_DIR: b.work, DEFAULT_PERMISSION_MODE: 'plan', ALLOWED_PERMISSION_MODES: 'plan,bypassPermissions' }, b.base)
  t.equal(checkPermissionMode(undefined, custom), 'plan', 'the configured default')
  t.equal(checkPermissionMode('bypassPermissions', custom), 'bypassPermissions')
  t.equal(STATUS_OF_CODE[(t.throws(() => checkPermissionMode('acceptEdits', custom)) as DomainError).code], 403)
})

test('checkEnvVars passes ordinary names and refuses steering ones with 403, naming each', async t => {
  t.same(checkEnvVars(undefined), {})
  t.same(checkEnvVars({ MY_VAR: '1', DEBUG: 'x' }), { MY_VAR: '1', DEBUG: 'x' })
  const err = t.throws(() => checkEnvVars({ MY_VAR: '1', LD_PRELOAD: '/x.so', ANTHROPIC_BASE_URL: 'http://evil' })) as DomainError
  t.equal(STATUS_OF_CODE[err.code], 403)
  t.equal(err.code.toLowerCase(), 'env_var_forbidden')
  t.match(err.message, 'LD_PRELOAD')
  t.match(err.message, 'ANTHROPIC_BASE_URL')
  t.same((err.problem?.errors as Array<{ path: string }>).map(e => e.path).sort(), ['/env_vars/ANTHROPIC_BASE_URL', '/env_vars/LD_PRELOAD'])
})
