import { test } from 'tap'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, normalize, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')

/**
 * The layers, bottom first: a module imports only from layers below its own (or its own folder).
 * domain ← config ← store, isolation, auth ← sessions, workspace ← engine ← cluster (a backend of the engine)
 * ← the HTTP adapters (schemas, sse, webhooks) ← plugins ← routes ← the app and the server.
 */
const RANK: Record<string, number> = {
  'src/domain': 0,
  'src/config.ts': 1,
  'src/package-info.ts': 0,
  'src/dotenv.ts': 1,
  'src/store': 2,
  'src/isolation': 2,
  'src/auth': 2,
  'src/startup.ts': 2,
  'src/sessions': 3,
  'src/workspace': 3,
  'src/engine': 4,
  'src/cluster': 5,
  'src/schemas': 6,
  'src/openai': 6,
  'src/sse.ts': 6,
  'src/webhooks.ts': 6,
  plugins: 7,
  routes: 8,
  'src/app.ts': 9,
  'src/server.ts': 10
}

/** The unit a file belongs to: its folder under src/ (or src's own file), plugins or routes. */
function unitOf (file: string): string {
  const parts = file.split('/')
  if (parts[0] === 'src') return parts.length > 2 ? `src/${parts[1]!}` : file
  return parts[0]!
}

function sources (dir: string): string[] {
  return readdirSync(join(ROOT, dir)).flatMap(name => {
    const path = join(dir, name)
    if (statSync(join(ROOT, path)).isDirectory()) return sources(path)
    return path.endsWith('.ts') ? [path] : []
  })
}

/** Every relative import of a file, as the unit it lands in. */
function importsOf (file: string): Array<{ spec: string, unit: string }> {
  const text = readFileSync(join(ROOT, file), 'utf8')
  return [...text.matchAll(/from '(\.[^']+)'/g)].map(m => {
    const target = relative(ROOT, normalize(join(ROOT, dirname(file), m[1]!))).replace(/\.js$/, '.ts')
    return { spec: m[1]!, unit: unitOf(target) }
  })
}

const files = ['src', 'plugins', 'routes'].flatMap(sources)

test('every source file belongs to a known layer', async t => {
  const unknown = [...new Set(files.map(unitOf))].filter(u => RANK[u] === undefined)
  t.strictSame(unknown, [], 'add a new folder to RANK, at the layer it belongs to')
})

test('imports point down: no module imports from its own layer or one above it', async t => {
  const upward: string[] = []
  for (const file of files) {
    const unit = unitOf(file)
    for (const i of importsOf(file)) {
      if (i.unit === unit || RANK[i.unit] === undefined) continue
      if (RANK[i.unit]! >= RANK[unit]!) upward.push(`${file} imports ${i.spec} (${unit} → ${i.unit})`)
    }
  }
  t.strictSame(upward, [])
})

test('routes read through the read model: never the store, the engine or the cluster', async t => {
  const reaching = files.filter(f => unitOf(f) === 'routes').flatMap(file =>
    importsOf(file).filter(i => ['src/store', 'src/engine', 'src/cluster'].includes(i.unit)).map(i => `${file} imports ${i.spec}`))
  t.strictSame(reaching, [])
})

/** A file's code without its comments and strings (log lines may speak of a cluster). */
const codeOf = (file: string): string => readFileSync(join(ROOT, file), 'utf8')
  .replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '')
  .replace(/'(?:[^'\\\n]|\\.)*'|`(?:[^`\\]|\\.)*`/g, "''")

test('the engine holds no branch on cluster mode: what differs comes through its ports', async t => {
  const branches = sources('src/engine').filter(f => /\bcluster\b/i.test(codeOf(f)))
  t.strictSame(branches, [])
})
