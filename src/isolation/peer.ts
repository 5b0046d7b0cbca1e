import { readdir, readFile, readlink } from 'node:fs/promises'
import { endianness } from 'node:os'
import { idsOfStatus, markerOf } from './proc.js'

/** Descriptors looked at in one process at most, so a process with very many cannot stall the server. */
const MAX_FDS = 4096

/** One end of a loopback TCP connection. */
export interface Endpoint { address: string, port: number }

/**
 * Who is at the other end of a loopback TCP connection: the uid and pid of the process holding
 * the client's socket, from /proc (the kernel's socket table, matched on both ends' addresses and
 * ports, then the holder's descriptors). With `marker`, only processes carrying it in their
 * environment are looked into. The server must be able to read every process's descriptors
 * (root, with agent identities). IPv4 only: the broker listens on 127.0.0.1. Asynchronous: the
 * kernel's tables take milliseconds to read, which the event loop does not wait for.
 */
export async function socketPeer (client: Endpoint, server: Endpoint, marker?: { name: string, value: string }): Promise<{ uid: number, pid: number } | null> {
  const entry = await socketEntry(client, server)
  if (entry === null) return null
  const pid = await pidHolding(entry.inode, entry.uid, marker)
  return pid === null ? null : { uid: entry.uid, pid }
}

/** An IPv4 address and port as /proc/net/tcp prints them (the address in host byte order). */
function procAddress ({ address, port }: Endpoint): string | null {
  const v4 = /^(?:::ffff:)?(\d+)\.(\d+)\.(\d+)\.(\d+)$/i.exec(address)
  if (v4 === null) return null
  const bytes = v4.slice(1, 5).map(Number)
  const ordered = endianness() === 'LE' ? bytes.reverse() : bytes
  return ordered.map(b => b.toString(16).padStart(2, '0')).join('').toUpperCase() + ':' + port.toString(16).toUpperCase().padStart(4, '0')
}

/** The client socket's entry (its owner's uid, its inode) in /proc/net/tcp. */
async function socketEntry (client: Endpoint, server: Endpoint): Promise<{ uid: number, inode: number } | null> {
  const local = procAddress(client)
  const remote = procAddress(server)
  if (local === null || remote === null) return null
  let text: string
  try {
    text = await readFile('/proc/net/tcp', 'latin1')
  } catch {
    return null
  }
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/)
    if (f.length >= 10 && f[1] === local && f[2] === remote) return { uid: Number(f[7]), inode: Number(f[9]) }
  }
  return null
}

/** The process of `uid` (carrying `marker`, if given) that holds the socket `inode`, if one does. */
async function pidHolding (inode: number, uid: number, marker?: { name: string, value: string }): Promise<number | null> {
  const link = `socket:[${inode}]`
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const pid = Number(name)
    try {
      const status = await readFile(`/proc/${name}/status`, 'latin1')
      if (idsOfStatus(status).uids[1] !== uid) continue
      if (marker !== undefined && markerOf(pid, marker.name) !== marker.value) continue
      for (const fd of (await readdir(`/proc/${name}/fd`)).slice(0, MAX_FDS)) {
        try {
          if (await readlink(`/proc/${name}/fd/${fd}`) === link) return pid
        } catch {}
      }
    } catch {
      // Gone meanwhile.
    }
  }
  return null
}
