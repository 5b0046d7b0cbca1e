import { test } from 'tap'
import { lstatSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { AgentIdentities } from '../../src/isolation/identities.js'
import { readKeyFile } from '../../src/auth/keys.js'

const skip = process.getuid?.() !== 0 ? 'changing owners needs root' : false

test('a link an agent puts in its home never makes the server change the owner of what it points at', { skip }, async t => {
  const base = mkdtempSync(join(tmpdir(), 'ccapi-agent-dirs-'))
  t.teardown(() => rmSync(base, { recursive: true, force: true }))
  const secret = join(base, 'server-secret')
  mkdirSync(secret, { mode: 0o700 })
  const ids = new AgentIdentities({ agentsDir: join(base, 'agents'), registryFile: join(base, 'agent-ids.json'), base: 24_000, uidRegistryDir: join(base, 'agent-uids') })
  const alice = ids.identityFor('alice')
  t.equal(statSync(alice.configDir).uid, alice.uid, 'the config directory is the agent\'s')
  // The agent (owner of its home) swaps its config directory for a link to a server path.
  rmSync(alice.configDir, { recursive: true })
  symlinkSync(secret, alice.configDir)
  const again = ids.identityFor('alice')
  t.equal(statSync(secret).uid, 0, 'the server path is still root\'s')
  t.equal(statSync(secret).mode & 0o777, 0o700, 'and its mode is unchanged')
  t.ok(lstatSync(again.configDir).isDirectory() && !lstatSync(again.configDir).isSymbolicLink(), 'the link was replaced by a real directory')
  t.equal(statSync(again.configDir).uid, alice.uid)
})

test('key names that are not directory names (. and ..) are refused', async t => {
  const base = mkdtempSync(join(tmpdir(), 'ccapi-agent-names-'))
  t.teardown(() => rmSync(base, { recursive: true, force: true }))
  for (const name of ['.', '..', '...']) {
    const file = join(base, `keys-${name.length}.json`)
    writeFileSync(file, JSON.stringify({ keys: [{ name, key_sha256: 'a'.repeat(64), scopes: ['runs:read'] }] }))
    t.throws(() => readKeyFile(file), { name: 'ConfigError' }, `a key named ${name} is refused`)
  }
  if (process.getuid?.() === 0) {
    const ids = new AgentIdentities({ agentsDir: join(base, 'agents'), registryFile: join(base, 'agent-ids.json'), base: 24_100, uidRegistryDir: join(base, 'agent-uids') })
    t.throws(() => ids.identityFor('..'), /cannot name an agent identity/)
  }
})
