import { isIP } from 'node:net'
import { networkInterfaces } from 'node:os'

// Which addresses are the public internet: the egress proxy connects to no other.

/** IPv4 ranges that are not the public internet: this network, private, shared, loopback, link-local, documentation, benchmarking, 6to4 relay, multicast, reserved and broadcast. */
const V4_SPECIAL: Array<[string, number]> = [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.88.99.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15],
  ['198.51.100.0', 24], ['203.0.113.0', 24], ['224.0.0.0', 4], ['240.0.0.0', 4]
]

/** An IPv4 address (dotted quad, as `net.isIP` accepts it) as a number. */
function v4Value (ip: string): number {
  return ip.split('.').reduce((n, octet) => n * 256 + Number(octet), 0)
}

const V4_BLOCKS = V4_SPECIAL.map(([net, len]) => ({ base: v4Value(net), size: 2 ** (32 - len) }))

function publicV4 (n: number): boolean {
  return !V4_BLOCKS.some(b => Math.floor(n / b.size) === Math.floor(b.base / b.size))
}

/** An IPv6 address (valid per `net.isIP`, no zone) as a 128-bit number. */
function v6Value (ip: string): bigint {
  let s = ip
  if (s.includes('.')) {
    // A dotted IPv4 tail (::ffff:1.2.3.4) becomes its two 16-bit groups.
    const at = s.lastIndexOf(':')
    const n = v4Value(s.slice(at + 1))
    s = s.slice(0, at + 1) + Math.floor(n / 65536).toString(16) + ':' + (n % 65536).toString(16)
  }
  const [head = '', tail] = s.split('::')
  const h = head === '' ? [] : head.split(':')
  const t = tail === undefined ? [] : tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t]
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n)
}

const v6Prefix = (net: string, len: number): { base: bigint, shift: bigint } => {
  const shift = BigInt(128 - len)
  return { base: v6Value(net) >> shift, shift }
}
const inV6 = (n: bigint, p: { base: bigint, shift: bigint }): boolean => (n >> p.shift) === p.base

const V4_MAPPED = v6Prefix('::ffff:0:0', 96)
const NAT64 = v6Prefix('64:ff9b::', 96)
/** Local-use NAT64 (RFC 8215): a network's own translator, whose layout may put a private IPv4 anywhere. */
const LOCAL_NAT64 = v6Prefix('64:ff9b:1::', 48)
const SIX_TO_FOUR = v6Prefix('2002::', 16)
/** Global unicast: everything outside it (::, ::1, 100::/64, fc00::/7, fe80::/10, fec0::/10, ff00::/8, the unassigned rest) is not the internet. */
const GLOBAL_UNICAST = v6Prefix('2000::', 3)
/** Inside global unicast but not public: IETF protocol assignments (Teredo, benchmarking...), documentation, SRv6 SIDs. */
const V6_SPECIAL = [v6Prefix('2001::', 23), v6Prefix('2001:db8::', 32), v6Prefix('3fff::', 20), v6Prefix('5f00::', 16)]

/**
 * Whether an address is on the public internet: false for every special-use range (loopback,
 * private, link-local, shared, documentation, multicast, reserved...), for IPv6 forms that carry
 * such an IPv4 address (mapped, NAT64, 6to4), and for anything that is not an IP address.
 */
export function isPublicAddress (ip: string): boolean {
  if (typeof ip !== 'string' || ip.includes('%')) return false
  const kind = isIP(ip)
  if (kind === 4) return publicV4(v4Value(ip))
  if (kind !== 6) return false
  const n = v6Value(ip)
  const low32 = Number(n & 0xffffffffn)
  if (inV6(n, V4_MAPPED)) return publicV4(low32)
  if (inV6(n, LOCAL_NAT64)) return false
  if (inV6(n, NAT64)) return publicV4(low32)
  if (inV6(n, SIX_TO_FOUR)) return publicV4(Number((n >> 80n) & 0xffffffffn))
  if (!inV6(n, GLOBAL_UNICAST)) return false
  return !V6_SPECIAL.some(p => inV6(n, p))
}

/**
 * Whether an address is public and not one of this host's own (a public address on one of its
 * interfaces reaches whatever listens on all of them: the server itself, a database). The host's
 * addresses are read again every minute.
 */
export function outsideHost (): (ip: string) => boolean {
  let own = new Set<string>()
  let at = 0
  return (ip) => {
    if (!isPublicAddress(ip)) return false
    if (Date.now() - at > 60_000) {
      own = new Set(Object.values(networkInterfaces()).flatMap(list => (list ?? []).map(a => addressKey(a.address.replace(/%.*$/, '')))))
      at = Date.now()
    }
    return !own.has(addressKey(ip))
  }
}

/** One spelling per address: IPv4 as itself, IPv6 by value (an IPv4-mapped one as its IPv4). */
function addressKey (ip: string): string {
  const kind = isIP(ip)
  if (kind === 4) return `4:${v4Value(ip)}`
  if (kind !== 6) return ip
  const n = v6Value(ip)
  return inV6(n, V4_MAPPED) ? `4:${Number(n & 0xffffffffn)}` : `6:${n.toString(16)}`
}
