import { test } from 'tap'
import Fastify from 'fastify'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse } from 'yaml'
import { serverOptions } from '../../src/app.js'
import { ConfigSchema, parseTrustProxy } from '../../src/config.js'

/**
 * docker-compose.yml, the Dockerfile, deploy/nginx.conf and .env.example describe one deployment:
 * every name, port and path one of them gives must be what the others (and the config schema)
 * expect. Docker itself is not needed: a mismatch here is a deployment that starts and then fails.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8')

const composeText = read('docker-compose.yml')
const compose = parse(composeText)
const nginxConf = read('deploy/nginx.conf').replace(/#.*$/gm, '')
const envExample = read('.env.example')
const configKeys = new Set(Object.keys(ConfigSchema.properties))

/** The operator's Claude credentials and CLI settings the server hands to the CLI; not server settings. */
const isCredential = (name: string): boolean =>
  /^ANTHROPIC_/.test(name) || /^CLAUDE_CODE_/.test(name) || name === 'CLAUDE_CONFIG_DIR'

/** Dockerfile instructions, continuation lines joined, comments dropped. */
const dockerfile = read('Dockerfile')
  .replace(/^\s*#.*\n/gm, '')
  .replace(/\\\n/g, ' ')
  .split('\n')
  .map(l => l.trim())
  .filter(l => l !== '')
  .map(l => { const i = l.indexOf(' '); return { op: l.slice(0, i).toUpperCase(), args: l.slice(i + 1).trim() } })
const instructions = (op: string): string[] => dockerfile.filter(i => i.op === op).map(i => i.args)

/** The runtime stage: the instructions after the last FROM. */
const lastFrom = dockerfile.map(i => i.op).lastIndexOf('FROM')
const runtime = dockerfile.slice(lastFrom)

function dockerEnv (): Record<string, string> {
  const env: Record<string, string> = {}
  for (const { op, args } of runtime) {
    if (op !== 'ENV') continue
    for (const [, k, v] of args.matchAll(/([A-Z_][A-Z0-9_]*)=(\S+)/g)) env[k!] = v!
  }
  return env
}

/** compose `environment` as a map (it may also be a list of KEY=VALUE). */
function environmentOf (service: any): Record<string, string> {
  const env = service.environment ?? {}
  if (!Array.isArray(env)) return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)]))
  return Object.fromEntries(env.map((e: string) => { const i = e.indexOf('='); return [e.slice(0, i), e.slice(i + 1)] }))
}

/** Short-syntax volume `source:target[:mode]` (or the long syntax) as source and target. */
function volumesOf (service: any): Array<{ source: string, target: string, readOnly: boolean }> {
  return (service.volumes ?? []).map((v: any) => {
    if (typeof v !== 'string') return { source: String(v.source), target: String(v.target), readOnly: v.read_only === true }
    const [source, target, mode] = v.split(':')
    return { source: source!, target: target!, readOnly: mode === 'ro' }
  })
}

/** The container side of a `ports` entry (`8080`, `8080:8080`, `127.0.0.1:8080:8080/tcp`). */
const containerPort = (p: unknown): string => String(typeof p === 'object' && p !== null ? (p as any).target : p).split(':').at(-1)!.replace(/\/.*$/, '')

/** Top-level directories of every repo file src/server.ts imports, directly or not. */
function serverSourceDirs (): Set<string> {
  const seen = new Set<string>()
  const queue = ['src/server.ts']
  while (queue.length > 0) {
    const file = queue.pop()!
    if (seen.has(file)) continue
    seen.add(file)
    for (const [, spec] of read(file).matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)) {
      queue.push(join(file, '..', spec!).replace(/\.js$/, '.ts'))
    }
  }
  return new Set([...seen].map(f => f.split('/')[0]!))
}

const services: Record<string, any> = compose.services
const api = services.api
const apiEnv = environmentOf(api)

test('the api service builds this repo\'s Dockerfile', async t => {
  const build = typeof api.build === 'string' ? { context: api.build } : api.build
  t.equal(build.context, '.', 'built from the repo root')
  t.ok(existsSync(join(ROOT, build.context, build.dockerfile ?? 'Dockerfile')), 'the Dockerfile exists')
})

test('every variable compose sets is a server setting or a credential for the CLI', async t => {
  for (const [name, service] of Object.entries(services)) {
    for (const key of Object.keys(environmentOf(service))) {
      t.ok(configKeys.has(key) || isCredential(key), `${name}: ${key} is a ConfigSchema key or a credential`)
    }
  }
  for (const [, name] of composeText.matchAll(/\$\{([A-Z_][A-Z0-9_]*)/g)) {
    t.match(envExample, new RegExp(`^#? *${name}=`, 'm'), `\${${name}} used by compose is documented in .env.example`)
  }
})

test('one port from the server to nginx: PORT, expose, EXPOSE, the nginx upstream, the healthchecks', async t => {
  const port = apiEnv.PORT
  t.ok(port !== undefined && /^\d+$/.test(port), `compose pins PORT (${port})`)
  t.same((api.expose ?? []).map(String), [port], 'the api service exposes PORT')
  t.same(instructions('EXPOSE'), [port], 'the Dockerfile EXPOSEs PORT')
  t.equal(dockerEnv().PORT, port, 'the Dockerfile\'s ENV PORT is the same')
  const upstream = /upstream\s+\w+\s*\{[^}]*\bserver\s+([\w.-]+):(\d+)/.exec(nginxConf)
  t.ok(services[upstream?.[1] ?? ''], `nginx's upstream host (${upstream?.[1]}) is a compose service`)
  t.equal(upstream?.[2], port, 'nginx proxies to PORT')

  // `process.env.PORT || <fallback>`: the env var is set in compose and the image; the fallback must agree.
  const probe = /fetch\('http:\/\/127\.0\.0\.1:'\+\(process\.env\.PORT\|\|(\d+)\)\+'(\/[^']*)'\)/
  const composeCheck = probe.exec([api.healthcheck?.test].flat().join(' '))
  t.equal(composeCheck?.[2], '/health', 'the compose healthcheck asks /health')
  t.equal(composeCheck?.[1], port, 'on PORT')
  const imageCheck = probe.exec(instructions('HEALTHCHECK').join(' '))
  t.equal(imageCheck?.[2], '/health', 'the image\'s HEALTHCHECK asks /health')
  t.equal(imageCheck?.[1], port, 'on PORT')
})

test('nginx publishes the port it listens on, with the repo\'s config', async t => {
  const nginx = services.nginx
  const listen = /^\s*listen\s+(?:[\d.]+:)?(\d+)[^;]*;/m.exec(nginxConf)?.[1]
  t.ok(listen, 'deploy/nginx.conf listens on a port')
  t.same((nginx.ports ?? []).map(containerPort), [listen], 'the published container port is nginx\'s listen port')
  const conf = volumesOf(nginx).find(v => v.target === '/etc/nginx/nginx.conf')
  t.ok(conf, 'deploy/nginx.conf is mounted as the main config')
  t.ok(conf !== undefined && existsSync(join(ROOT, conf.source)), `its source ${conf?.source} exists`)
})

test('volumes: named ones declared, bind sources there, targets where the server looks', async t => {
  const env = dockerEnv()
  for (const [name, service] of Object.entries(services)) {
    for (const { source } of volumesOf(service)) {
      if (source.startsWith('.') || source.startsWith('/')) {
        // ./workspace is the operator's: the README's setup creates it, the repo does not hold it.
        const dir = source.replace(/^\.\//, '')
        const documented = existsSync(join(ROOT, source)) || read('README.md').split('\n').some(l => /mkdir -p /.test(l) && l.split(/\s+/).includes(dir))
        t.ok(documented, `${name}: bind source ${source} exists or the README creates it`)
      } else {
        t.ok(Object.hasOwn(compose.volumes ?? {}, source), `${name}: named volume ${source} is declared at top level`)
      }
    }
  }
  const target = (source: string): string | undefined => volumesOf(api).find(v => v.source === source)?.target
  for (const [source, key] of [['data', 'DATA_DIR'], ['claude-config', 'CLAUDE_CONFIG_DIR'], ['./workspace', 'DEFAULT_WORKING_DIR']] as const) {
    t.ok(target(source), `the api mounts ${source}`)
    t.equal(target(source), apiEnv[key], `${source} is mounted at compose's ${key}`)
    t.equal(target(source), env[key], `and at the image's ENV ${key}`)
  }

  // A named volume takes the ownership of the image's directory at first use: the image must create
  // every writable mount point (the server, as root, owns them; agents get their own below them).
  const created = runtime.filter(i => i.op === 'RUN').flatMap(i => [...i.args.matchAll(/mkdir\s+(?:-p\s+)?([^&;]+)/g)].flatMap(m => m[1]!.trim().split(/\s+/)))
  // (A read-only mount, like the key file's directory, needs no writable mount point.)
  for (const { target: dir } of volumesOf(api).filter(v => !v.readOnly)) {
    t.ok(created.some(c => dir === c || dir.startsWith(c + '/')), `the image creates ${dir}`)
  }
  t.equal(target('agents'), apiEnv.AGENTS_DIR, 'each key\'s HOME and sessions live on a volume (AGENTS_DIR)')
  t.equal(apiEnv.AGENTS_DIR, env.AGENTS_DIR)
})

test('the healthcheck gates nginx, and depends_on names real services', async t => {
  for (const [name, service] of Object.entries(services)) {
    const deps = Array.isArray(service.depends_on) ? Object.fromEntries(service.depends_on.map((d: string) => [d, {}])) : (service.depends_on ?? {})
    for (const [dep, how] of Object.entries(deps as Record<string, { condition?: string }>)) {
      t.ok(services[dep], `${name} depends on ${dep}, a service`)
      if (how.condition === 'service_healthy') t.ok(services[dep]?.healthcheck ?? instructions('HEALTHCHECK').length > 0, `${dep} has a healthcheck`)
    }
  }
})

test('the image: an LTS node base, agents never as root, and the CMD runs what `npm run build` writes', async t => {
  const engines = JSON.parse(read('package.json')).engines.node as string
  const minimum = Number(/(\d+)/.exec(engines)?.[1])
  for (const from of instructions('FROM')) {
    const major = Number(/^node:(\d+)/.exec(from)?.[1])
    t.ok(major % 2 === 0, `${from}: an even (LTS) node major`)
    t.ok(major >= minimum, `${from}: satisfies engines.node ${engines}`)
  }
  // The server runs as root only to run agents as unprivileged identities: ISOLATION=uid makes it
  // refuse to start rather than run an agent with its own rights.
  const users = runtime.filter(i => i.op === 'USER').map(i => i.args)
  const asRoot = /^(root|0)(:|$)/.test(users.at(-1) ?? 'root')
  if (asRoot) {
    t.equal(dockerEnv().ISOLATION, 'uid', 'a root server requires agent identities (ISOLATION=uid)')
    t.equal(environmentOf(services.api).ISOLATION, 'uid', 'and so does compose')
  } else {
    t.pass(`the server runs as ${users.at(-1)}`)
  }
  const cmd = JSON.parse(instructions('CMD').at(-1) ?? '[]') as string[]
  t.same(cmd, ['node', 'dist/src/server.js'], 'CMD runs the compiled server')

  const base = JSON.parse(read('tsconfig.json'))
  const build = JSON.parse(read('tsconfig.build.json'))
  t.equal(build.extends, './tsconfig.json')
  const options = { ...base.compilerOptions, ...build.compilerOptions }
  t.equal(options.outDir, 'dist', 'the build writes to dist/')
  t.equal(options.rootDir, '.', 'keeping the tree: src/server.ts becomes dist/src/server.js')
  t.notOk(options.noEmit, 'and emits')
  t.ok(existsSync(join(ROOT, 'src/server.ts')), 'src/server.ts exists')
  t.equal(JSON.parse(read('package.json')).scripts.build, 'tsc -p tsconfig.build.json', '`npm run build` is that build')

  // What the build stage copies exists, is not excluded from the build context, and covers the build.
  const ignored = read('.dockerignore').split('\n').map(l => l.trim()).filter(l => l !== '' && !l.startsWith('#'))
  const copied = instructions('COPY').filter(a => !a.startsWith('--from')).flatMap(a => a.split(/\s+/).slice(0, -1))
  for (const source of copied) {
    t.ok(existsSync(join(ROOT, source)), `COPY ${source}: exists`)
    t.notOk(ignored.includes(source), `COPY ${source}: not in .dockerignore`)
  }
  for (const dir of serverSourceDirs()) t.ok(copied.includes(dir), `${dir}/, which the server imports, is copied into the build stage`)
})

test('.env.example documents server settings and credentials, and every setting', async t => {
  const names = [...envExample.matchAll(/^#? *([A-Z][A-Z0-9_]*)=/gm)].map(m => m[1]!)
  for (const name of names) t.ok(configKeys.has(name) || isCredential(name), `${name} is a ConfigSchema key or a documented credential`)
  for (const key of configKeys) t.ok(names.includes(key), `${key} is in .env.example`)
})

test('compose\'s TRUST_PROXY believes nginx on the compose network, and only it', async t => {
  const trust = parseTrustProxy(apiEnv.TRUST_PROXY ?? 'false')
  t.not(typeof trust, 'number', 'not a hop count: Fastify ignores those')
  t.not(trust, true, 'not `true`: then any client could choose the address in the logs')
  const app = Fastify(serverOptions('silent', trust))
  app.get('/ip', async request => request.ip)
  t.teardown(() => app.close())
  // Docker's default address pools: 172.17-31.x.x and 192.168.x.x. The client claims one address,
  // nginx appends the one it really saw.
  for (const nginx of ['172.18.0.3', '192.168.16.3']) {
    const res = await app.inject({ url: '/ip', remoteAddress: nginx, headers: { 'x-forwarded-for': '198.51.100.4, 203.0.113.9' } })
    t.equal(res.body, '203.0.113.9', `nginx at ${nginx}: the server logs the client nginx saw`)
  }
  const direct = await app.inject({ url: '/ip', remoteAddress: '203.0.113.50', headers: { 'x-forwarded-for': '198.51.100.4' } })
  t.equal(direct.body, '203.0.113.50', 'a peer outside the private ranges is not believed')
})
