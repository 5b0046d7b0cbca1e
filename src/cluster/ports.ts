import type { EnginePorts } from '../engine/ports.js'
import type { ClusterNode } from './cluster.js'
import { ClusterQueue } from './cluster-queue.js'

/**
 * The engine's ports in a cluster sharing one PostgreSQL database: the shared queue, the other
 * instances reached through the database's notifications, transcripts kept in the database, and
 * the bus that carries events between instances. No warm spares: a run starts on whichever
 * instance claims it, never on the one it came to.
 */
export function clusterPorts (node: ClusterNode): EnginePorts {
  return {
    queue: host => new ClusterQueue(host, node),
    peers: {
      call: async (to, op, args, timeoutMs) => await node.call(to, op, args, timeoutMs),
      serve: handler => node.handle(handler),
      stats: () => ({ instance_id: node.instanceId, instances: node.instances })
    },
    transcripts: {
      materialise: async (configDir, owner, sessionId) => await node.transcripts.materialise(configDir, owner, sessionId),
      copyFrom: async (configDir, owner, sessionId) => await node.transcripts.copyFrom(configDir, owner, sessionId),
      shared: node.transcripts
    },
    bus: node.bus,
    warmSpares: false
  }
}
