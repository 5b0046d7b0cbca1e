import fp from 'fastify-plugin'
import { Engine } from '../src/engine/engine.js'
import { type EngineDeps } from '../src/engine/types.js'
import { localPorts } from '../src/engine/local.js'
import { clusterPorts } from '../src/cluster/ports.js'
import { PostgresRunStore } from '../src/store/postgres-store.js'
import { ClusterNode } from '../src/cluster/cluster.js'
import { Snapshots } from '../src/workspace/snapshots.js'
import { join } from 'node:path'

declare module 'fastify' {
  interface FastifyInstance {
    /** The run engine: start, cancel, message, interrupt and follow runs. Routes read through the read model. */
    engine: Engine
  }
}

/** The engine with the ports of one machine, or of a cluster: chosen here, once. */
function createEngine (deps: EngineDeps, cluster: ClusterNode | undefined): Engine {
  return new Engine(deps, cluster !== undefined ? clusterPorts(cluster) : localPorts())
}

/**
 * The run engine as a decorator, on the store and isolation the plugins before it set up; with
 * the PostgreSQL store it takes part in the cluster (a `ClusterNode`). At start it probes the
 * CLI; once the server listens it recovers what a previous process left; on close it drains
 * (`SHUTDOWN_GRACE_S`) and ends every running run's process tree before the server lets go.
 */
export default fp(async (fastify) => {
  const { config, store, instanceId, containment } = fastify
  // Cluster mode: the store is PostgreSQL exactly when DATABASE_URL is set.
  const cluster = store instanceof PostgresRunStore && config.databaseUrl !== undefined
    ? new ClusterNode({ url: config.databaseUrl, store, instanceId, maxConcurrent: config.maxConcurrentRuns, deadAfterMs: config.runLeaseMs, log: fastify.log.child({ component: 'cluster' }) })
    : undefined
  // What runs change is recorded with git, where there is one (`RUN_CHANGES`).
  const snapshots = config.recordChanges && await Snapshots.available()
    ? new Snapshots(join(config.dataDir, 'snapshots'))
    : undefined
  if (config.recordChanges && snapshots === undefined) fastify.log.warn('RUN_CHANGES=on but git is not installed: the changes of runs are not recorded (install git, or set RUN_CHANGES=off)')
  let engine: Engine
  try {
    engine = createEngine({
      settings: config,
      log: fastify.log.child({ component: 'runner' }),
      store,
      leaseMs: config.runLeaseMs,
      instanceId,
      ...containment,
      ...(snapshots !== undefined ? { snapshots } : {})
    }, cluster)
    await engine.start()
  } catch (err) {
    // The store, the broker and DATA_DIR's lock are let go by their own plugins' onClose.
    await cluster?.stop()
    throw err
  }
  fastify.decorate('engine', engine)
  // Only a server that got its port may kill and requeue what a previous one left. Requests about
  // runs that arrive meanwhile wait for it (routes/api.ts).
  fastify.addHook('onListen', async () => {
    await engine.recover()
  })
  // preClose, not onClose: open streams wait for their runs, so the runs must end first.
  fastify.addHook('preClose', async () => {
    await engine.close()
  })
}, { name: 'engine', dependencies: ['config', 'store', 'isolation'] })
