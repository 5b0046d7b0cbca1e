import { test } from 'tap'
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { RunChanges } from '../../src/workspace/changes.js'
import { Snapshots } from '../../src/workspace/snapshots.js'

/** Recording a directory before and after a run, and reverting, without a server: the rules at the seam. */

function setup (t: { testdir: () => string }) {
  const dir = t.testdir()
  mkdirSync(join(dir, 'work'))
  mkdirSync(join(dir, 'data'))
  const work = join(dir, 'work')
  const snapshots = new Snapshots(join(dir, 'data'))
  return { work, snapshots, changes: new RunChanges(snapshots, [dir]) }
}

test('what a run did, whatever did it: files, modes, links; the directory\'s own repository untouched', async t => {
  const { work, snapshots, changes } = setup(t)
  writeFileSync(join(work, 'script.sh'), 'echo 1\n')
  writeFileSync(join(work, 'data.bin'), Buffer.from([0, 1, 2, 3, 255]))
  symlinkSync('script.sh', join(work, 'link'))
  mkdirSync(join(work, '.git'))
  writeFileSync(join(work, '.git', 'HEAD'), 'ref: refs/heads/main\n')
  await snapshots.before('r1', work)
  chmodSync(join(work, 'script.sh'), 0o755)
  writeFileSync(join(work, 'data.bin'), Buffer.from([9, 9, 9]))
  rmSync(join(work, 'link'))
  symlinkSync('data.bin', join(work, 'link'))
  writeFileSync(join(work, 'new name with spaces\nand a newline.txt'), 'odd\n')
  t.same(await snapshots.after('r1'), { files: 4, added: 1, modified: 3, deleted: 0 })
  const list = await changes.list('r1')
  t.same(list.files.map(f => [f.path, f.change]).sort(), [['data.bin', 'modified'], ['link', 'modified'], ['new name with spaces\nand a newline.txt', 'added'], ['script.sh', 'modified']])
  const diff = await changes.diff('r1', 1 << 20)
  t.match(diff.text, /Binary files/, 'a binary file is named, not printed')
  t.match(diff.text, /old mode 100644\nnew mode 100755/, 'a mode change shows')
  t.equal(readFileSync(join(work, '.git', 'HEAD'), 'utf8'), 'ref: refs/heads/main\n', 'the directory\'s own .git is never written')

  await changes.revert('r1')
  t.equal(lstatSync(join(work, 'script.sh')).mode & 0o777, 0o644, 'the mode is put back')
  t.same([...readFileSync(join(work, 'data.bin'))], [0, 1, 2, 3, 255], 'binary content is put back whole')
  t.equal(readlinkSync(join(work, 'link')), 'script.sh', 'a link is put back as a link')
  t.notOk(existsSync(join(work, 'new name with spaces\nand a newline.txt')))
  await t.rejects(changes.revert('r1'), { code: 'changed_since' }, 'a second revert would undo the first: refused')
})

test('what it cannot see, said: ignored files; a run that is not recorded', async t => {
  const { work, snapshots, changes } = setup(t)
  writeFileSync(join(work, '.gitignore'), 'node_modules/\n')
  await snapshots.before('r2', work)
  mkdirSync(join(work, 'node_modules'))
  writeFileSync(join(work, 'node_modules', 'dep.js'), 'x')
  writeFileSync(join(work, 'main.js'), 'y')
  t.same(await snapshots.after('r2'), { files: 1, added: 1, modified: 0, deleted: 0 }, 'ignored files are left out, as in a repository')
  await t.rejects(changes.list('never-recorded'), { code: 'changes_not_recorded' })
  await snapshots.before('r3', work)
  await t.rejects(changes.list('r3'), { code: 'changes_not_recorded' }, 'not before the run has ended')
})
