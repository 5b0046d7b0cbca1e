import { test } from 'tap'
import { createServer, type Server } from 'node:net'
import { join } from 'node:path'
import { findBwrap } from '../../src/isolation/sandbox.js'
import { boxesFor } from '../../src/isolation/cgroups.js'
import { eventually, fakeModel, keysFile as writeKeys, openToAgents, pidsMatching, sandbox, startServer, testEnv, toolResults, type Sandbox } from '../helper.js'

/**
 * Every run in a box of its own size, with real control groups, namespaces and uids, as root (as
 * CI runs): a run over its memory or process limit is ended as a whole while another key's run
 * goes on, a CPU limit holds a busy run to its share, a key's own lower limit is its alone, the
 * group is the containment, and a sandboxed run reaches neither the host's loopback nor
 * link-local addresses, but still its model.
 */
const root = process.getuid?.() === 0
const groups = root ? (await boxesFor()).boxes : null
await groups?.close()
// CI (REQUIRE_CGROUPS=1) runs these on a host that has control groups: there, none is a failure, not a skip.
const skip = !root ? 'control groups and agent identities need root (CI runs as root)' : groups === null && process.env.REQUIRE_CGROUPS !== '1' ? 'this host gives no control groups (cgroup v2 delegated, or v1 memory and pids)' : false
const skipSandbox = skip !== false ? skip : findBwrap() === null ? 'bubblewrap is not installed' : false

const ALICE = 'cca_alice-0123456789abcdefghijklmnopqrstuv'
const BOB = 'cca_bob-0123456789abcdefghijklmnopqrstuvwxy'

/** Outside /tmp: inside the sandbox /tmp is a private tmpfs, which would hide the very paths under test. */
const varTmpBox = (t: Parameters<typeof sandbox>[0]): Sandbox => sandbox(t, '/var/tmp')

/** A node process that takes `mib` MiB (touched, so really held), tagged so the test can look for it. */
const hog = (mib: number, tag: string): string =>
  // NODE_OPTIONS: the test runner's own, naming a file the sandbox's private /tmp may hide.
  `env -u NODE_OPTIONS node -e "const a=[];for(let i=0;i<${mib / 64};i++)a.push(Buffer.alloc(64<<20,1));console.log('held ${mib}');setTimeout(()=>{},1e6)" ${tag}`

async function server (t: Parameters<typeof varTmpBox>[0], extra: Record<string, string>, uidOffset: number) {
  const box = varTmpBox(t)
  const model = await fakeModel(t)
  const base = openToAgents(box)
  const keys = writeKeys(box, {
    alice: { key: ALICE, scopes: ['runs:write', 'runs:read'] },
    bob: { key: BOB, scopes: ['runs:write', 'runs:read'], limits: { memory_max: '512M' } }
  })
  const env = testEnv(box, model, { ISOLATION: 'sandbox', AGENTS_DIR: join(base, 'agents'), AGENT_UID_BASE: String(uidOffset + (process.pid % 1000) * 10), API_KEYS_FILE: keys, ...extra })
  const s = await startServer(t, env)
  const run = async (key: string, body: object): Promise<any> =>
    await (await fetch(`${s.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body: JSON.stringify(body) })).json()
  return { box, model, env, server: s, run }
}

test('memory: a run over its limit ends resource_limit/memory as a whole, another key\'s run goes on; a key\'s lower limit is its own', { skip: skipSandbox }, async t => {
  const { model, server: s, run } = await server(t, { RUN_MEMORY_MAX: '1536M' }, 31_000)
  t.teardown(() => { for (const p of pidsMatching('hog3701')) process.kill(p, 'SIGKILL') })
  const health = await (await fetch(`${s.base}/health`)).json() as any
  t.match(health.limits, { enforced: /^cgroup[12]$/, memory_max: 1536 * 1024 * 1024, pids_max: 512, cpu_max: null }, '/health says what holds runs, and to what')

  model.on('take 3 GiB', [{ tool: 'Bash', input: { command: hog(3072, 'hog3701') } }, { text: 'held it' }])
  model.on('slow hello', [{ tool: 'Bash', input: { command: 'sleep 2; echo hello' } }, { text: 'said hello' }])
  const [big, other] = await Promise.all([run(ALICE, { prompt: 'take 3 GiB', allowed_tools: ['Bash'] }), run(BOB, { prompt: 'slow hello', allowed_tools: ['Bash'] })])
  t.equal(big.status, 'failed')
  t.equal(big.error_code, 'resource_limit', big.error)
  t.equal(big.limit, 'memory')
  t.match(big.error, /memory/)
  t.equal(other.status, 'succeeded', `bob's run at the same time is unaffected: ${String(other.error)}`)
  t.ok(await eventually(() => pidsMatching('hog3701').length === 0, 3000), 'nothing of the run is left')

  // bob's own limit (512M) is his alone: 1 GiB ends his run, and not alice's.
  model.on('take 1 GiB', [{ tool: 'Bash', input: { command: hog(1024, 'hog3701').replace('setTimeout(()=>{},1e6)', '0') } }, { text: 'held it' }])
  const bobs = await run(BOB, { prompt: 'take 1 GiB', allowed_tools: ['Bash'] })
  t.equal(bobs.error_code, 'resource_limit', bobs.error)
  t.equal(bobs.limit, 'memory')
  const alices = await run(ALICE, { prompt: 'take 1 GiB', allowed_tools: ['Bash'] })
  t.equal(alices.status, 'succeeded', alices.error)
  t.match(toolResults(model.calls).at(-1), /held 1024/, 'alice\'s run held its GiB')
  t.ok(alices.resources.peak_memory_bytes >= 1024 * 1024 * 1024, `its peak memory is in its result (${String(alices.resources.peak_memory_bytes)})`)
  t.ok(alices.resources.cpu_seconds > 0)

  const events = await (await fetch(`${s.base}/api/runs/${String(big.run_id)}/events`, { headers: { 'x-api-key': ALICE } })).text()
  t.match(events, /"limit":"memory"/, 'the result event names the limit')
  const metrics = await (await fetch(`${s.base}/metrics`, { headers: { 'x-api-key': 'test-key-0123456789' } })).text()
  t.match(metrics, /ccapi_runs_limited_total\{limit="memory",key="alice"\} 1/)
  t.match(metrics, /ccapi_runs_limited_total\{limit="memory",key="bob"\} 1/)
  t.match(metrics, /ccapi_run_peak_memory_bytes_count \d+/)
  t.equal(s.child.exitCode, null, 'the server is alive')
})

test('processes: 400 under RUN_PIDS_MAX=128 end resource_limit/pids and leave nothing', { skip: skipSandbox }, async t => {
  const { model, run } = await server(t, { RUN_PIDS_MAX: '128' }, 32_000)
  t.teardown(() => { for (const p of pidsMatching('sleep 3702')) process.kill(p, 'SIGKILL') })
  model.on('fork 400', [{ tool: 'Bash', input: { command: 'for i in $(seq 400); do sleep 3702 & done; wait' } }, { text: 'forked' }])
  const r = await run(ALICE, { prompt: 'fork 400', allowed_tools: ['Bash'] })
  t.equal(r.error_code, 'resource_limit', r.error)
  t.equal(r.limit, 'pids')
  t.ok(await eventually(() => pidsMatching('sleep 3702').length === 0, 3000), 'none of its processes is left')
  model.on('after', [{ tool: 'Bash', input: { command: 'echo fine' } }, { text: 'fine' }])
  const next = await run(ALICE, { prompt: 'after', allowed_tools: ['Bash'] })
  t.equal(next.status, 'succeeded', `the next run of the key starts in a box of its own: ${String(next.error)}`)
})

test('CPU: two busy loops under RUN_CPU_MAX=0.25 get about a quarter of a CPU', { skip }, async t => {
  const model = await fakeModel(t)
  const box = varTmpBox(t)
  const s = await startServer(t, testEnv(box, model, { RUN_CPU_MAX: '0.25' }))
  model.on('spin', [{ tool: 'Bash', input: { command: 'timeout 4 sh -c "while :; do :; done" & timeout 4 sh -c "while :; do :; done" & wait; echo spun' } }, { text: 'spun' }])
  const r = await (await fetch(`${s.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': 'test-key-0123456789', 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'spin', allowed_tools: ['Bash'] }) })).json() as any
  t.equal(r.status, 'succeeded', r.error)
  const cpu = r.resources.cpu_seconds as number
  // Two loops for 4 s would take 8 CPU-seconds on two free cores; a quarter CPU allows ~1.
  t.ok(cpu <= 0.25 * r.execution_time + 0.3, `the tree used at most a quarter of a CPU over the run (${cpu} s of CPU in ${String(r.execution_time)} s)`)
  t.ok(cpu >= 0.8, `and the loops did run (${cpu} s)`)
})

test('the control group is the containment: what a run detaches, strips of its marker and double-forks is gone at its end (ISOLATION=none)', { skip }, async t => {
  const model = await fakeModel(t)
  const box = varTmpBox(t)
  const s = await startServer(t, testEnv(box, model, {}))
  t.teardown(() => { for (const p of [...pidsMatching('sleep 3703'), ...pidsMatching('sleep 3704')]) process.kill(p, 'SIGKILL') })
  model.on('escape', [{ tool: 'Bash', input: { command: 'env -i setsid nohup sleep 3703 > /dev/null 2>&1 & (env -i setsid sh -c "sleep 3704 &" > /dev/null 2>&1 &); sleep 0.5; echo left' } }, { text: 'left them' }])
  const r = await (await fetch(`${s.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': 'test-key-0123456789', 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'escape', allowed_tools: ['Bash'] }) })).json() as any
  t.equal(r.status, 'succeeded', r.error)
  t.ok(await eventually(() => pidsMatching('sleep 3703').length === 0 && pidsMatching('sleep 3704').length === 0, 3000), 'the escapees are gone')
})

test('a sandboxed run reaches neither the host\'s loopback (a service, the server) nor link-local addresses, and still its model', { skip: skipSandbox }, async t => {
  const { model, server: s, run } = await server(t, {}, 33_000)
  let connections = 0
  const service: Server = createServer(c => { connections++; c.end('SECRET-FROM-LOOPBACK\n') })
  await new Promise<void>(resolve => service.listen(0, '127.0.0.1', resolve))
  t.teardown(() => service.close())
  const port = (service.address() as { port: number }).port
  // A host service on a UNIX socket below /run (as a database's is): no network namespace stops that, /run of its own does.
  const unixPath = `/run/ccapi-limits-test-${process.pid}.sock`
  let unixConnections = 0
  const unixService: Server = createServer(c => { unixConnections++; c.end('SECRET-FROM-UNIX\n') })
  await new Promise<void>(resolve => unixService.listen(unixPath, resolve))
  t.teardown(() => unixService.close())
  const serverPort = new URL(s.base).port
  const probe = (host: string, p: number | string, label: string): string =>
    `env -u NODE_OPTIONS node -e "const s=require('net').connect(${p},'${host}');s.setTimeout(2000,()=>{console.log('${label}=TIMEOUT');process.exit()});s.on('connect',()=>{console.log('${label}=CONNECTED');process.exit()}).on('error',e=>console.log('${label}='+e.code))"`
  const script = [
    `curl -s -m 3 http://127.0.0.1:${port}/; echo "curl-service=$?"`,
    `curl -s -m 3 http://127.0.0.1:${serverPort}/health; echo "curl-server=$?"`,
    probe('127.0.0.1', port, 'direct-service'),
    probe('127.0.0.1', serverPort, 'direct-server'),
    probe('169.254.169.254', 80, 'link-local'),
    `env -u NODE_OPTIONS node -e "require('net').connect('${unixPath}').on('connect',()=>console.log('unix=CONNECTED')).on('error',e=>console.log('unix='+e.code))"`,
    'echo "proxy=$HTTPS_PROXY"'
  ].join('\n')
  model.on('reach out', [{ tool: 'Bash', input: { command: script } }, { text: 'tried' }])
  const r = await run(ALICE, { prompt: 'reach out', allowed_tools: ['Bash'] })
  t.equal(r.status, 'succeeded', `the run talks to its model: ${String(r.error)}`)
  const out = toolResults(model.calls).at(-1) ?? ''
  t.equal(connections, 0, 'the loopback service never saw a connection')
  t.notMatch(out, /SECRET-FROM-LOOPBACK/)
  t.notMatch(out, /"status":"(healthy|degraded)"/, 'nor did the server\'s own port answer')
  t.match(out, /direct-service=ECONNREFUSED/, 'the run\'s loopback is its own')
  t.match(out, /direct-server=ECONNREFUSED/)
  t.match(out, /link-local=(ENETUNREACH|EHOSTUNREACH|TIMEOUT)/)
  t.match(out, /unix=ENOENT/, 'the host\'s UNIX sockets below /run are not there')
  t.equal(unixConnections, 0)
  t.match(out, /proxy=http:\/\/127\.0\.0\.1:3128/, 'outbound HTTP goes through the egress proxy')
})

test('a server run by an ordinary user: no control groups, rlimits instead; runs work, and one process cannot take more than RUN_MEMORY_MAX (at least 2 GiB there)', { skip: root ? false : 'needs root to start the server as another user' }, async t => {
  const { chmodSync, chownSync } = await import('node:fs')
  const model = await fakeModel(t)
  const box = varTmpBox(t)
  chmodSync(join(box.home, '..'), 0o755)
  for (const d of [box.home, box.work]) chownSync(d, 65534, 65534)
  const s = await startServer(t, testEnv(box, model, { ISOLATION: 'auto', RUN_AS_UID: '65534', RUN_MEMORY_MAX: '2G' }))
  const health = await (await fetch(`${s.base}/health`)).json() as any
  t.equal(health.limits.enforced, 'rlimit', '/health says only rlimits hold runs here')
  t.match(s.output(), /no control groups for runs here: limits fall back to rlimits/, 'and the log says what that means')
  model.on('take 3 GiB here', [{ tool: 'Bash', input: { command: hog(3072, 'hog3705').replace('setTimeout(()=>{},1e6)', '0') + ' 2>&1 | grep -m1 -iE "error|held"; echo "exit=$?"' } }, { text: 'tried' }])
  const r = await (await fetch(`${s.base}/api/execute`, { method: 'POST', headers: { 'x-api-key': 'test-key-0123456789', 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'take 3 GiB here', allowed_tools: ['Bash'] }) })).json() as any
  t.equal(r.status, 'succeeded', `the CLI itself runs under the rlimits: ${String(r.error)}`)
  const out = toolResults(model.calls).at(-1) ?? ''
  t.notMatch(out, /held 3072/, 'the process could not hold 3 GiB')
  t.match(out, /allocation failed|out of memory|RangeError/i, out)
})

test('RUN_NETWORK=none: the model only, no proxy; RUN_NETWORK=host: the host\'s network, said in /health', { skip: skipSandbox }, async t => {
  const none = await server(t, { RUN_NETWORK: 'none' }, 34_000)
  t.equal((await (await fetch(`${none.server.base}/health`)).json() as any).isolation.network, 'none')
  none.model.on('look for a proxy', [{ tool: 'Bash', input: { command: 'echo "proxy=[$HTTPS_PROXY]"; curl -s -m 3 -x http://127.0.0.1:3128 http://example.com/; echo "curl=$?"' } }, { text: 'looked' }])
  const r = await none.run(ALICE, { prompt: 'look for a proxy', allowed_tools: ['Bash'] })
  t.equal(r.status, 'succeeded', `the run talks to its model: ${String(r.error)}`)
  const out = toolResults(none.model.calls).at(-1) ?? ''
  t.match(out, /proxy=\[\]/, 'no proxy in its environment')
  t.match(out, /curl=7/, 'and none to be reached')

  const host = await server(t, { RUN_NETWORK: 'host' }, 35_000)
  t.equal((await (await fetch(`${host.server.base}/health`)).json() as any).isolation.network, 'host')
  t.match(host.server.output(), /RUN_NETWORK=host: sandboxed runs share the host's network/, 'a warning at start')
})
