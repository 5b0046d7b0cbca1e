import { execa } from 'execa'
import { existsSync } from 'node:fs'

/** What a run's sandbox must show, hide and let it write. */
export interface SandboxPaths {
  /** The run's working directory: the one place of the shared tree it may write. */
  cwd: string
  /** Its identity's HOME (its own Claude config inside): writable. */
  home: string
  /** Where every identity's HOME lives: hidden but for its own. */
  agentsDir: string
  /** The server's paths: hidden (an empty tmpfs or /dev/null in their place). */
  hiddenDirs: string[]
  hiddenFiles: string[]
  /** Directories the run must see even where the sandbox replaces their parent (the CLI's, under /tmp). */
  readOnly?: string[]
}

/** The bubblewrap executable, if this machine has one. */
export function findBwrap (): string | null {
  for (const p of ['/usr/bin/bwrap', '/usr/local/bin/bwrap', '/bin/bwrap']) if (existsSync(p)) return p
  return null
}

/**
 * bubblewrap's arguments for one run: its own PID namespace (it sees only its own processes, and
 * when the run ends nothing of it survives: the namespace dies with its first process), the whole
 * file system read-only, the server's paths hidden, other identities' homes hidden, and only the
 * run's directory, its own HOME and a private /tmp writable.
 */
export function sandboxArgs (p: SandboxPaths): string[] {
  const args = [
    '--unshare-pid', '--unshare-ipc', '--unshare-uts',
    '--die-with-parent',
    '--ro-bind', '/', '/',
    '--proc', '/proc',
    '--dev', '/dev',
    '--tmpfs', '/tmp',
    '--tmpfs', '/dev/shm'
  ]
  // After the private /tmp: a CLI installed below /tmp must stay visible.
  for (const d of p.readOnly ?? []) if (existsSync(d)) args.push('--ro-bind', d, d)
  for (const d of p.hiddenDirs) if (existsSync(d)) args.push('--tmpfs', d)
  for (const f of p.hiddenFiles) if (existsSync(f)) args.push('--ro-bind', '/dev/null', f)
  args.push('--tmpfs', p.agentsDir, '--bind', p.home, p.home, '--bind', p.cwd, p.cwd, '--chdir', p.cwd)
  return args
}

/**
 * Whether bubblewrap works here for an unprivileged identity (unprivileged user namespaces, PID
 * namespaces): tried once at start as `uid`.
 */
export async function sandboxWorks (bwrap: string, uid: number): Promise<{ ok: true } | { ok: false, why: string }> {
  try {
    await execa(bwrap, ['--unshare-pid', '--die-with-parent', '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', 'true'], { uid, gid: uid, timeout: 10_000, env: { PATH: '/usr/bin:/bin' }, extendEnv: false, cwd: '/' })
    return { ok: true }
  } catch (err) {
    return { ok: false, why: (err as Error).message.split('\n').find(l => l.includes('bwrap:')) ?? (err as Error).message.split('\n')[0] ?? 'bwrap failed' }
  }
}
