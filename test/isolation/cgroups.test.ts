import { test } from 'tap'
import { mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Value } from '@sinclair/typebox/value'
import { boxesFor, cgroupMounts, ownGroups } from '../../src/isolation/cgroups.js'
import { gateScript, rlimitOptions } from '../../src/isolation/limits.js'
import { narrower, parseBytes } from '../../src/domain/limits.js'
import { ConfigError, ConfigSchema, toSettings, type RawConfig } from '../../src/config.js'
import { readKeyFile, toApiKey } from '../../src/auth/keys.js'
import { launchOf } from '../../src/engine/launch-command.js'

/** The logic of run limits without a kernel: sizes, settings, keys, the cgroup files' protocol, the launch's gate. */

const G = 1024 ** 3
const M = 1024 ** 2

test('sizes: binary units, fractions, none; anything else is refused', async t => {
  t.equal(parseBytes('4G'), 4 * G)
  t.equal(parseBytes('1536M'), 1536 * M)
  t.equal(parseBytes('1.5g'), 1.5 * G)
  t.equal(parseBytes('512MiB'), 512 * M)
  t.equal(parseBytes('1048576'), M)
  t.equal(parseBytes('none'), undefined)
  t.equal(parseBytes('max'), undefined)
  for (const bad of ['', '4X', '-1G', 'lots', '1e9']) t.throws(() => parseBytes(bad), /not a size/, bad)
})

test('a key\'s limits only narrow the server\'s', async t => {
  t.same(narrower({ memoryMax: 4 * G, pidsMax: 512 }, { memoryMax: G, pidsMax: 1024, cpuMax: 0.5 }), { memoryMax: G, pidsMax: 512, cpuMax: 0.5 })
  t.same(narrower({ memoryMax: 4 * G }, undefined), { memoryMax: 4 * G })
})

const raw = (over: Partial<RawConfig> = {}): RawConfig => Value.Default(ConfigSchema, { ...over }) as RawConfig
const settingsDir = (t: { teardown: (fn: () => void) => void }): string => {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'ccapi-limits-')))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

test('RUN_* settings: defaults 4G and 512, CPU and disk unset; a bad value names its variable', async t => {
  const dir = settingsDir(t)
  t.same(toSettings(raw(), {}, dir).runLimits, { memoryMax: 4 * G, pidsMax: 512 })
  t.same(toSettings(raw({ RUN_MEMORY_MAX: '1536M', RUN_PIDS_MAX: '128', RUN_CPU_MAX: '0.25', RUN_DISK_MAX: '2G' }), {}, dir).runLimits, { memoryMax: 1536 * M, pidsMax: 128, cpuMax: 0.25, diskMax: 2 * G })
  t.same(toSettings(raw({ RUN_MEMORY_MAX: 'none', RUN_PIDS_MAX: 'none' }), {}, dir).runLimits, {}, 'none lifts a limit')
  t.throws(() => toSettings(raw({ RUN_MEMORY_MAX: 'lots' }), {}, dir), { name: 'ConfigError', message: /RUN_MEMORY_MAX=lots/ })
  t.throws(() => toSettings(raw({ RUN_MEMORY_MAX: '64M' }), {}, dir), { name: 'ConfigError', message: /below 256M/ })
  t.throws(() => toSettings(raw({ RUN_PIDS_MAX: '1.5' }), {}, dir), ConfigError)
  t.throws(() => toSettings(raw({ RUN_PIDS_MAX: '8' }), {}, dir), { message: /below 32/ })
  t.throws(() => toSettings(raw({ RUN_CPU_MAX: 'half' }), {}, dir), { message: /RUN_CPU_MAX=half/ })
  t.same(toSettings(raw({ RUN_EGRESS_ALLOW: 'PyPI.org, *.npmjs.org' }), {}, dir).egressAllow, ['pypi.org', '*.npmjs.org'])
  t.equal(toSettings(raw(), {}, dir).runNetwork, 'egress')
})

test('keys file: limits as sizes or bytes; a bad one names the key\'s entry', async t => {
  const dir = settingsDir(t)
  const file = join(dir, 'keys.json')
  const entry = (limits: object): object => ({ name: 'bob', key_sha256: 'a'.repeat(64), scopes: ['runs:write'], limits })
  writeFileSync(file, JSON.stringify({ keys: [entry({ memory_max: '512M', pids_max: 64, cpu_max: 0.5, disk_max: 1048576 })] }))
  t.same(toApiKey(readKeyFile(file).keys[0]!).limits, { memoryMax: 512 * M, pidsMax: 64, cpuMax: 0.5, diskMax: M })
  writeFileSync(file, JSON.stringify({ keys: [entry({ memory_max: 'lots' })] }))
  t.throws(() => readKeyFile(file), { name: 'ConfigError', message: /\/keys\/0\/limits: .*lots/ })
  writeFileSync(file, JSON.stringify({ keys: [entry({ memory: '1G' })] }))
  t.throws(() => readKeyFile(file), ConfigError, 'an unknown limit is refused')
})

test('mountinfo and /proc/self/cgroup: v1 controllers, v2, and a container\'s mounted sub-tree', async t => {
  const mounts = cgroupMounts([
    '35 26 0:30 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory',
    '36 26 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct',
    '37 26 0:32 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids',
    '38 26 0:33 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw',
    '39 26 0:34 / /proc rw - proc proc rw'
  ].join('\n'))
  t.same(mounts.map(m => [m.point, m.fstype, m.root]), [['/sys/fs/cgroup/memory', 'cgroup', '/'], ['/sys/fs/cgroup/cpu,cpuacct', 'cgroup', '/'], ['/sys/fs/cgroup/pids', 'cgroup', '/docker/abc'], ['/sys/fs/cgroup/unified', 'cgroup2', '/']])
  t.ok(mounts[1]!.options.includes('cpuacct'))
  const own = ownGroups('8:pids:/docker/abc\n4:memory:/user/1\n3:cpu,cpuacct:/\n0::/init.scope\n')
  t.equal(own.get('pids'), '/docker/abc')
  t.equal(own.get('cpuacct'), '/')
  t.equal(own.get(''), '/init.scope')
})

test('cgroup v2 protocol on a delegated group: controllers enabled for the server\'s runs, and each run gets its limits, events and usage', async t => {
  // A directory standing in for the cgroup2 file system: the files the kernel would have.
  const fs = realpathSync(mkdtempSync(join(tmpdir(), 'ccapi-cgfs-')))
  t.teardown(() => rmSync(fs, { recursive: true, force: true }))
  const own = join(fs, 'svc')
  mkdirSync(own)
  writeFileSync(join(own, 'cgroup.controllers'), 'cpuset cpu io memory pids\n')
  writeFileSync(join(own, 'cgroup.procs'), '')
  writeFileSync(join(own, 'cgroup.subtree_control'), '')
  const { boxes, why } = await boxesFor({ mountinfo: `30 20 0:26 / ${fs} rw - cgroup2 cgroup2 rw`, procCgroup: '0::/svc\n', pid: 4242 })
  t.same(why, [])
  t.equal(boxes?.enforced, 'cgroup2')
  t.same([...boxes!.controls].sort(), ['cpu', 'memory', 'pids'])
  t.equal(readFileSync(join(own, 'cgroup.subtree_control'), 'utf8'), '+memory +pids +cpu', 'controllers enabled for the server\'s children')
  const box = boxes!.create('run-1', { memoryMax: 1536 * M, pidsMax: 128, cpuMax: 0.25 })
  const dir = join(own, 'ccapi-4242', 'run-1')
  t.same(box.procsFiles, [join(dir, 'cgroup.procs')])
  t.equal(readFileSync(join(dir, 'memory.max'), 'utf8'), String(1536 * M))
  t.equal(readFileSync(join(dir, 'pids.max'), 'utf8'), '128')
  t.equal(readFileSync(join(dir, 'cpu.max'), 'utf8'), '25000 100000')
  t.equal(await box.hit(), null)
  writeFileSync(join(dir, 'pids.events'), 'max 3\n')
  t.equal(await box.hit(), 'pids')
  writeFileSync(join(dir, 'memory.events'), 'low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n')
  t.equal(await box.hit(), 'memory', 'an OOM kill in the group is the memory limit')
  writeFileSync(join(dir, 'memory.peak'), String(700 * M))
  writeFileSync(join(dir, 'cpu.stat'), 'usage_usec 1500000\nuser_usec 1000000\n')
  t.same(await box.usage(), { peak_memory_bytes: 700 * M, cpu_seconds: 1.5 })
  box.apply({ memoryMax: 512 * M })
  t.equal(readFileSync(join(dir, 'memory.max'), 'utf8'), String(512 * M), 'a claimed spare takes the run\'s lower limit')
  t.equal(readFileSync(join(dir, 'pids.max'), 'utf8'), 'max')
})

test('the gate: rlimits by prlimit, then nothing runs until the server says go', async t => {
  t.same(rlimitOptions({ memoryMax: G, pidsMax: 64, diskMax: M }, { enforced: 'cgroup1', prlimit: '/usr/bin/prlimit' }, true), [`--fsize=${M}`], 'with control groups, only a file\'s size')
  t.same(rlimitOptions({ memoryMax: 4 * G, pidsMax: 64 }, { enforced: 'rlimit', prlimit: '/usr/bin/prlimit' }, true), [`--data=${4 * G}`, '--nproc=64'])
  t.same(rlimitOptions({ memoryMax: 4 * G, pidsMax: 64 }, { enforced: 'rlimit', prlimit: '/usr/bin/prlimit' }, false), [`--data=${4 * G}`], 'processes are counted per uid: never for the server\'s own')
  t.same(rlimitOptions({ memoryMax: 512 * M }, { enforced: 'rlimit', prlimit: '/usr/bin/prlimit' }, true), [`--data=${2 * G}`], 'never below what the CLI itself reserves')
  t.same(rlimitOptions({ memoryMax: G }, { enforced: 'none', prlimit: null }, true), [])
  const setup = { enforced: 'cgroup1' as const, boxes: null, prlimit: '/usr/bin/prlimit', why: [], oomProtected: true }
  const cli = process.execPath
  const plain = launchOf(cli, ['-p'], '/work', { A: '1' }, { limits: { setup, limits: { diskMax: M } } })
  t.equal(plain.command, '/bin/sh')
  t.equal(plain.gated, true)
  t.same(plain.args.slice(2), ['ccapi-limits', '/usr/bin/prlimit', `--fsize=${M}`, '--', cli, '-p'])
  const missing = launchOf('/nonexistent/claude', [], '/work', {}, { limits: { setup, limits: {} } })
  t.same([missing.command, missing.gated], ['/nonexistent/claude', false], 'a CLI that is not there is spawned as itself, to fail as cli_not_found')
  t.match(plain.args[1], /read -r g <&3/, 'with no other descriptor, the gate is 3')
  const sandboxed = launchOf('/opt/claude', [], '/work', {}, { identity: { uid: 1, gid: 1 }, wrap: { command: '/usr/bin/unshare', args: ['x'], privileged: true, envFd: 3 }, limits: { setup, limits: {} } })
  t.match(sandboxed.args[1], /<&4/, 'after the environment\'s descriptor, 4')
  t.same(sandboxed.options.env, { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }, 'the root part still has none of the run\'s environment')
  t.match(gateScript(5), /oom_score_adj/)
})
