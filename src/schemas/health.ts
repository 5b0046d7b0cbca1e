import { Type, type Static } from '@sinclair/typebox'

/** `GET /health`: never spawns a process; the CLI probe is cached and refreshed in the background. */
export const HealthSchema = Type.Object({
  status: Type.Union([Type.Literal('healthy'), Type.Literal('degraded'), Type.Literal('shutting_down')]),
  version: Type.String({ description: 'This server\'s version.' }),
  claude_code_available: Type.Boolean(),
  claude_code_version: Type.Union([Type.String(), Type.Null()]),
  credentials: Type.Union([Type.Literal('ok'), Type.Literal('missing'), Type.Literal('unknown')], {
    description: 'Whether the CLI finds a Claude credential (`ANTHROPIC_API_KEY`, `CLAUDE_CODE_OAUTH_TOKEN`, a `claude` login, or a cloud provider). `missing`: runs fail with `not_authenticated`, and `status` is `degraded`. `unknown` while the CLI is unavailable.'
  }),
  store: Type.Union([Type.Literal('ok'), Type.Literal('unavailable')], { description: 'Whether the run store answers. `unavailable`: runs cannot be started or read, and `status` is `degraded`.' }),
  isolation: Type.Object({
    level: Type.Union([Type.Literal('none'), Type.Literal('uid'), Type.Literal('sandbox')], { description: '`sandbox`: as `uid`, each run also in its own PID and mount namespace; `uid`: each key\'s runs execute as an unprivileged agent identity of their own; `none`: as the server\'s own user.' }),
    credential_broker: Type.Boolean({ description: 'Runs get a per-run token instead of the operator\'s Claude credential (false with a cloud provider, or no credential to front).' }),
    network: Type.Union([Type.Literal('egress'), Type.Literal('none'), Type.Literal('host')], { description: 'A sandboxed run\'s network (`RUN_NETWORK`): `egress`, a namespace of its own whose only ways out are the credential broker and a proxy to public internet addresses; `none`, the broker only; `host`, the host\'s network (also at `uid` and `none`, which have no namespaces).' }),
    network_error: Type.Optional(Type.String({ description: 'Why runs share the host\'s network although `RUN_NETWORK` asks for their own (socat missing).' })),
    error: Type.Optional(Type.String({ description: 'Present when runs cannot start their CLI as they would run (the start-up self-check failed, or the last runs or warm spares failed to start): what went wrong, as a person can act on it. `status` is then `degraded`, until a launch works again.' }))
  }),
  limits: Type.Object({
    enforced: Type.Union(['cgroup2', 'cgroup1', 'rlimit', 'none'].map(l => Type.Literal(l)), { description: 'How runs are held to their limits here: control groups (v2, or v1), rlimits where neither is writable (memory per process, processes per agent identity, no CPU limit), or `none` (logged loudly at start).' }),
    memory_max: Type.Union([Type.Integer(), Type.Null()], { description: 'Bytes of memory one run\'s process tree may hold (`RUN_MEMORY_MAX`); null: no limit.' }),
    pids_max: Type.Union([Type.Integer(), Type.Null()], { description: 'Processes and threads one run may have at once (`RUN_PIDS_MAX`).' }),
    cpu_max: Type.Union([Type.Number(), Type.Null()], { description: 'CPUs one run may use (`RUN_CPU_MAX`); null: all.' }),
    disk_max: Type.Union([Type.Integer(), Type.Null()], { description: 'Bytes of one file a run writes, and of its private /tmp (`RUN_DISK_MAX`); null: no limit.' }),
    disk_enforced: Type.Union([Type.Literal('file_and_tmp'), Type.Literal('file'), Type.Literal('none')], { description: 'What of `disk_max` is enforced: each file\'s size (an rlimit) and, at `sandbox`, the size of the run\'s private /tmp; the total a run adds to its working directory is not (that needs file system quotas).' })
  }, { description: 'Resource limits of runs (keys may have lower ones).' }),
  uptime_s: Type.Number(),
  runs: Type.Object({ active: Type.Integer(), queued: Type.Integer() }),
  warm: Type.Object({
    parked: Type.Integer({ description: 'Warm spares parked now, ready for a new session.' }),
    target: Type.Integer({ description: 'How many there should be (`WARM_SPARES`; 0: warm start is off).' })
  }, { description: 'Warm start: CLIs started ahead of demand, which runs of new sessions start on.' }),
  cluster: Type.Optional(Type.Object({
    instance_id: Type.String({ description: 'This instance (kept in its `DATA_DIR`).' }),
    instances: Type.Integer({ description: 'Instances sharing the database that heartbeat lately, this one included.' })
  }, { description: 'Cluster mode only (`DATABASE_URL`): this instance among those sharing the database.' }))
}, { title: 'Health' })
export type Health = Static<typeof HealthSchema>
