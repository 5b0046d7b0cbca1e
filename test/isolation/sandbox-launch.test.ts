import { test } from 'tap'
import { chmodSync, chownSync, mkdirSync, mkdtempSync, realpathSync, rmSync, statSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { sandboxLaunch, type SandboxTools } from '../../src/isolation/sandbox.js'
import { launchOf } from '../../src/engine/launch-command.js'

/** How a run's CLI is launched, decided without launching it (the launches themselves: private-home.test.ts). */
const skip = process.getuid?.() !== 0 ? 'needs root (paths of other owners)' : false
const UID = 41_000 + (process.pid % 500)
const tools: SandboxTools = { bwrap: '/usr/bin/bwrap', unshare: '/usr/bin/unshare', setpriv: '/usr/bin/setpriv', stage: '/run/claude-code-api-stage' }

function layout (t: { teardown: (fn: () => unknown) => void }): { base: string, priv: string, home: string, cwd: string } {
  const base = realpathSync(mkdtempSync(join(tmpdir(), 'ccapi-launch-')))
  t.teardown(() => rmSync(base, { recursive: true, force: true }))
  chmodSync(base, 0o755)
  const priv = join(base, 'private')
  const home = join(priv, 'agents', 'alice')
  const cwd = join(priv, 'work', 'alice')
  for (const d of [home, cwd]) {
    mkdirSync(d, { recursive: true })
    chownSync(d, UID, UID)
  }
  chmodSync(priv, 0o700)
  return { base, priv, home, cwd }
}

const paths = (l: ReturnType<typeof layout>, cwd = l.cwd) => ({ uid: UID, gid: UID, cwd, home: l.home, agentsDir: join(l.priv, 'agents'), hiddenDirs: [], hiddenFiles: [] })

test('paths below a directory closed to the identity: a privileged launch that checks what it binds', { skip }, async t => {
  const l = layout(t)
  const launch = sandboxLaunch(paths(l), tools)
  t.equal(launch.privileged, true)
  t.equal(launch.command, tools.unshare)
  t.equal(launch.envFd, 3, 'the run\'s environment reaches bubblewrap through a descriptor')
  t.ok(launch.args.includes('--args'), 'bubblewrap reads it with --args')
  const st = statSync(l.cwd)
  t.ok(launch.args.includes(`${st.dev}:${st.ino}`), 'each staged path is checked against the directory the server saw')
  t.ok(launch.args.includes(l.priv), 'the closed directory is covered')

  const { command, options, fds } = launchOf('/cli', ['--x'], l.cwd, { ANTHROPIC_API_KEY: 'sk-ant-run-secret', PATH: '/usr/bin' }, { identity: { uid: UID, gid: UID }, wrap: launch })
  t.equal(command, tools.unshare)
  t.same(options.env, { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }, 'the root part of the launch gets nothing of the run\'s environment')
  t.match(Buffer.from(fds[0]!).toString(), /^--clearenv\0--setenv\0ANTHROPIC_API_KEY\0sk-ant-run-secret\0/)
})

test('a directory in the way that the agent owns, or a run directory swapped for a link, is refused', { skip }, async t => {
  const l = layout(t)
  // The agent closes a directory of its own to force the privileged path, then could swap it.
  const mine = join(l.base, 'mine')
  mkdirSync(join(mine, 'deep'), { recursive: true })
  chownSync(mine, UID, UID)
  chownSync(join(mine, 'deep'), UID, UID)
  chmodSync(mine, 0o000)
  t.throws(() => sandboxLaunch(paths(l, join(mine, 'deep')), tools), /the agent identity could change it/)
  chmodSync(mine, 0o755)

  const link = join(l.priv, 'work', 'link')
  symlinkSync(l.home, link)
  t.throws(() => sandboxLaunch(paths(l, link), tools), /no longer a directory/, 'a link is never bound by root')
})

test('at uid the identity enters its directory itself; reachable paths need nothing privileged', { skip }, async t => {
  const { command, args, options } = launchOf('/cli', ['--x'], '/srv/work/alice', {}, { identity: { uid: UID, gid: UID } })
  t.equal(command, '/bin/sh')
  t.same(args.slice(3), ['/srv/work/alice', '/cli', '--x'], 'cd as the identity, then the CLI')
  t.match(options, { cwd: '/', uid: UID, gid: UID }, 'started in / as the identity')
  const base = realpathSync(mkdtempSync(join(tmpdir(), 'ccapi-launch-open-')))
  t.teardown(() => rmSync(base, { recursive: true, force: true }))
  chmodSync(base, 0o755)
  const home = join(base, 'agents', 'alice')
  mkdirSync(home, { recursive: true })
  const launch = sandboxLaunch({ uid: UID, gid: UID, cwd: home, home, agentsDir: join(base, 'agents'), hiddenDirs: ['/root/.claude'], hiddenFiles: [] }, tools)
  t.equal(launch.privileged, false)
  t.equal(launch.command, tools.bwrap)
  t.notOk(launch.args.includes('/root/.claude'), 'a path the identity cannot reach is never named to bubblewrap')
})
