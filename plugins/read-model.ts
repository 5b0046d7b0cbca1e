import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { ApprovalRecord, RunFilter } from '../src/domain/records.js'

type Engine = FastifyInstance['engine']
type Store = FastifyInstance['store']

/** What routes read about runs: the stored run, and what the engine knows of it while it lives. */
function runsOf (engine: Engine, store: Store) {
  return {
    /** A stored run, queued, running or ended (any key's: routes check who may see it). */
    get: async (id: string) => await store.getRun(id),
    /** Stored runs, newest first, by status, session, key and page. */
    list: async (filter: RunFilter) => await store.listRuns(filter),
    /** The live handle of a queued or running run held here (its status is the freshest). */
    live: (id: string) => engine.get(id),
    /** A queued run's place in the queue (1-based): here, or in the cluster's. */
    queuePosition: async (id: string) => await engine.queuePosition(id),
    /** How many of the run's approvals wait for an answer. */
    pendingApprovals: async (id: string) => await engine.pendingApprovals(id),
    /** The attempts at delivering the run's webhooks, oldest first. */
    deliveries: async (id: string) => await store.deliveries(id)
  }
}

/** What routes read about approvals (answering one is the engine's: `engine.answerApproval`). */
function approvalsOf (store: Store) {
  return {
    /** Approvals oldest first, by run, key and status. */
    list: async (filter: { runId?: string, keyName?: string, status?: ApprovalRecord['status'], limit: number }) => await store.listApprovals(filter),
    /** One approval by its id. */
    get: async (id: string) => await store.getApproval(id)
  }
}

/** What `/health` and `/metrics` report; all of it cached or counted, never a process spawned. */
function serverStatusOf (engine: Engine, isolation: FastifyInstance['isolation']) {
  return {
    /** The CLI as the last probe found it: available, its version, its credential. */
    cli: () => engine.probe.status,
    /** Whether the run store answered its last ping (every few seconds). */
    storeAnswers: () => engine.storeAnswers,
    /** Why runs could not launch their CLI lately (`isolation.error`), or null. */
    launchError: () => engine.launches.error,
    /** Whether the server is draining. */
    shuttingDown: () => engine.shuttingDown,
    /** Runs running here, and runs waiting for a slot (in a cluster, in the shared queue). */
    runs: async () => await engine.stats(),
    /** The warm spares parked now, and how many there should be. */
    warm: () => engine.warmStats(),
    /** Cluster mode: this instance's id and how many instances are alive (undefined on one machine). */
    cluster: () => engine.clusterStats(),
    /** The isolation level, and whether the credential broker fronts the operator's credential. */
    isolation
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Runs as routes read them: stored, live, queue position, pending approvals, webhook deliveries. */
    runs: ReturnType<typeof runsOf>
    /** Approvals as routes read them: listed by run, key and status, or one by id. */
    approvals: ReturnType<typeof approvalsOf>
    /** The server's state for `/health` and `/metrics` (`server` is Fastify's own HTTP server). */
    serverStatus: ReturnType<typeof serverStatusOf>
    /** The sessions catalog: list, transcript, rename, fork, delete. */
    sessions: Engine['sessions']
  }
}

/**
 * The read model routes read through, so none reaches into the engine or the store: `runs`,
 * `approvals`, `serverStatus` and `sessions`. What changes runs stays the engine's (`startRun`,
 * `engine.cancel`, `engine.message`, …).
 */
export default fp(async (fastify) => {
  const { engine, store } = fastify
  fastify.decorate('runs', runsOf(engine, store))
  fastify.decorate('approvals', approvalsOf(store))
  fastify.decorate('serverStatus', serverStatusOf(engine, fastify.isolation))
  fastify.decorate('sessions', engine.sessions)
}, { name: 'read-model', dependencies: ['store', 'isolation', 'engine'] })
