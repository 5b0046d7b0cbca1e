import { readFileSync } from 'node:fs'

/**
 * What `/proc` says of one process, for the server's view of agent identities' processes: the
 * ids it runs under and the run marker in its environment. Readers of other users' processes
 * need root (or the same user).
 */

/** A process's ids, from the text of `/proc/<pid>/status`: real, effective, saved, file system. */
export function idsOfStatus (status: string): { uids: number[], gids: number[] } {
  const ids = (name: string): number[] => new RegExp(`^${name}:\\s+(.*)$`, 'm').exec(status)?.[1]?.trim().split(/\s+/).map(Number) ?? []
  return { uids: ids('Uid'), gids: ids('Gid') }
}

/** The uids of a process (real, effective, saved, file system), or null when it is gone. */
export function uidsOf (pid: number): number[] | null {
  try {
    return idsOfStatus(readFileSync(`/proc/${pid}/status`, 'latin1')).uids
  } catch {
    return null
  }
}

/** The value of `name` in a process's environment, if it has one. */
export function markerOf (pid: number, name: string): string | undefined {
  let env: string
  try {
    env = readFileSync(`/proc/${pid}/environ`, 'utf8')
  } catch {
    return undefined
  }
  const prefix = `${name}=`
  for (const entry of env.split('\0')) if (entry.startsWith(prefix)) return entry.slice(prefix.length)
  return undefined
}

/** The name of the variable that marks every process of one run, so the whole tree can be found. */
export const RUN_MARKER_VAR = 'CLAUDE_API_RUN_MARKER'
