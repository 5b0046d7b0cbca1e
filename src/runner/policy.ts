import { realpath, stat } from 'node:fs/promises'
import { resolve } from 'node:path'
import { isInside, type PermissionMode, type Settings } from '../config.js'
import { EnvVarForbidden, PermissionModeForbidden, WorkingDirectoryForbidden, WorkingDirectoryNotFound, withProblem } from '../errors.js'
import { refusedEnvName } from './child-env.js'

export { isInside }

/**
 * Resolve a requested working directory to its real path and check it lies inside an allowed
 * root. Resolving first means neither `..` nor a symlink can lead outside.
 */
export async function resolveWorkingDir (requested: string | undefined, settings: Settings): Promise<string> {
  if (requested === undefined) return settings.defaultWorkingDir
  const absolute = resolve(settings.defaultWorkingDir, requested)
  const outside = () => new WorkingDirectoryForbidden(`working_directory ${requested} is outside the allowed roots: ${settings.allowedRoots.join(', ')}`)
  let real: string
  try {
    real = await realpath(absolute)
  } catch {
    // Say "outside" before "missing", so a 400 never tells what exists outside the roots.
    if (!settings.allowedRoots.some(root => isInside(root, absolute))) throw outside()
    throw withProblem(new WorkingDirectoryNotFound(`working_directory ${requested} does not exist`), { problem: { errors: [{ path: '/working_directory', message: 'does not exist' }] } })
  }
  if (!settings.allowedRoots.some(root => isInside(root, real))) throw outside()
  if (!(await stat(real)).isDirectory()) {
    throw withProblem(new WorkingDirectoryNotFound(`working_directory ${requested} is not a directory`), { problem: { errors: [{ path: '/working_directory', message: 'is not a directory' }] } })
  }
  return real
}

/** Refuse (403) any request variable that could steer credentials, routing, loading or the sandbox. */
export function checkEnvVars (vars: Record<string, string> | undefined): Record<string, string> {
  if (vars === undefined) return {}
  const refused = Object.keys(vars).map(name => ({ name, why: refusedEnvName(name) })).filter(r => r.why !== null)
  if (refused.length > 0) {
    throw withProblem(new EnvVarForbidden(`env_vars not allowed: ${refused.map(r => r.why).join('; ')}`), {
      problem: { errors: refused.map(r => ({ path: `/env_vars/${r.name}`, message: r.why })) }
    })
  }
  return vars
}

/** The permission mode for a run: the request's, if the operator allows it (403 otherwise). */
export function checkPermissionMode (mode: PermissionMode | undefined, settings: Settings): PermissionMode {
  const chosen = mode ?? settings.defaultPermissionMode
  if (!settings.allowedPermissionModes.includes(chosen)) {
    throw new PermissionModeForbidden(`permission_mode ${chosen} is not allowed; allowed: ${settings.allowedPermissionModes.join(', ')}`)
  }
  return chosen
}
