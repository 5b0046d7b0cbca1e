// Compile the server only when dist/ is older than its sources, so `npm start` and `npm run keys`
// start at once on a built tree and still never run stale code after an edit or a `git pull`.
import { existsSync, readdirSync, statSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { execFileSync } from 'node:child_process'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const SOURCES = ['src', 'plugins', 'routes', 'scripts', 'bench/bare-server.ts']
const CONFIG = ['tsconfig.json', 'tsconfig.build.json', 'package.json']

function * tsFiles (path) {
  const st = statSync(path, { throwIfNoEntry: false })
  if (st === undefined) return
  if (st.isDirectory()) {
    for (const name of readdirSync(path)) yield * tsFiles(join(path, name))
  } else if (path.endsWith('.ts') && !path.endsWith('.d.ts')) {
    yield path
  }
}

function stale () {
  const configTime = Math.max(...CONFIG.map(f => statSync(join(root, f), { throwIfNoEntry: false })?.mtimeMs ?? 0))
  for (const dir of SOURCES) {
    for (const file of tsFiles(join(root, dir))) {
      const out = join(root, 'dist', relative(root, file).replace(/\.ts$/, '.js'))
      if (!existsSync(out)) return `${relative(root, out)} is missing`
      const outTime = statSync(out).mtimeMs
      if (outTime < statSync(file).mtimeMs) return `${relative(root, file)} changed`
      if (outTime < configTime) return 'the build configuration changed'
    }
  }
  return null
}

const why = stale()
if (why !== null) {
  process.stderr.write(`Building (${why})…\n`)
  try {
    execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' })
  } catch {
    process.stderr.write('The build failed; see the errors above.\n')
    process.exit(1)
  }
}
