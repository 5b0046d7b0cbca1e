import { readdirSync, readFileSync, readlinkSync } from 'node:fs'

/**
 * Who is at the other end of a loopback TCP connection: the uid and pid of the process holding
 * the client's socket, from /proc (the kernel's socket tables, then the holders' descriptors).
 * The server must be able to read every process's descriptors (root, with agent identities).
 */
export function socketPeer (clientPort: number, serverPort: number): { uid: number, pid: number } | null {
  const entry = socketEntry(clientPort, serverPort)
  if (entry === null) return null
  const pid = pidHolding(entry.inode, entry.uid)
  return pid === null ? null : { uid: entry.uid, pid }
}

const portOf = (address: string): number => parseInt(address.slice(address.lastIndexOf(':') + 1), 16)

/** The client socket's entry (its owner's uid, its inode) in /proc/net/tcp{,6}. */
function socketEntry (clientPort: number, serverPort: number): { uid: number, inode: number } | null {
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string
    try {
      text = readFileSync(table, 'latin1')
    } catch {
      continue
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/)
      if (f.length < 10) continue
      if (portOf(f[1]!) === clientPort && portOf(f[2]!) === serverPort) return { uid: Number(f[7]), inode: Number(f[9]) }
    }
  }
  return null
}

/** The process of `uid` holding the socket `inode`, if one does. */
function pidHolding (inode: number, uid: number): number | null {
  const link = `socket:[${inode}]`
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const status = readFileSync(`/proc/${name}/status`, 'latin1')
      if (Number(/^Uid:\s+\d+\s+(\d+)/m.exec(status)?.[1]) !== uid) continue
      for (const fd of readdirSync(`/proc/${name}/fd`)) {
        try {
          if (readlinkSync(`/proc/${name}/fd/${fd}`) === link) return Number(name)
        } catch {}
      }
    } catch {
      // Gone meanwhile.
    }
  }
  return null
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
