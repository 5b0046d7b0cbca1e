import { randomUUID } from 'node:crypto'
import type { PermissionResult, PermissionUpdate } from '@anthropic-ai/claude-agent-sdk'
import { ApprovalNotFound, ApprovalResolved } from '../domain/errors.js'
import type { ApprovalRecord } from '../domain/records.js'
import type { RunStore } from '../store/store.js'
import type { RunHandle } from './run-handle.js'
import type { ApprovalAnswer } from '../domain/records.js'

/** What the CLI tells about a permission request (the SDK's `canUseTool` options). */
export interface PermissionAsk {
  signal: AbortSignal
  suggestions?: PermissionUpdate[]
  title?: string
  description?: string
  toolUseID?: string
  agentID?: string
}

type Outcome = { answer?: ApprovalAnswer, reason: 'answered' | 'timed_out' | 'run_ended' }

interface Waiting {
  record: ApprovalRecord
  handle: RunHandle
  /** Settle it: false when it already was (a second answer, or one after its deadline). */
  settle: (outcome: Outcome) => boolean
  /** Resolves with the record once its outcome is stored and logged. */
  recorded: Promise<ApprovalRecord>
}

/**
 * Parks the permission requests of `approvals: ask` runs until someone answers, the approval
 * times out, or its run ends; each is in the store and the run's log from the moment it is asked
 * (`approval_requested`) to the moment it is settled (`approval_resolved`). Every wait has a
 * deadline. `onAsked` tells the rest of the server (the approval webhook).
 */
export class ApprovalDesk {
  private readonly waiting = new Map<string, Waiting>()

  constructor (
    private readonly store: RunStore,
    private readonly onAsked: (handle: RunHandle, record: ApprovalRecord) => void
  ) {}

  /** Pending approvals of a live run. */
  pendingOf (runId: string): number {
    let n = 0
    for (const w of this.waiting.values()) if (w.record.runId === runId) n++
    return n
  }

  /** The SDK's `canUseTool` for one run. */
  async ask (handle: RunHandle, toolName: string, input: Record<string, unknown>, ask: PermissionAsk): Promise<PermissionResult> {
    const now = Date.now()
    const record: ApprovalRecord = {
      id: randomUUID(),
      runId: handle.id,
      keyName: handle.keyName,
      status: 'pending',
      toolName,
      input,
      toolUseId: ask.toolUseID ?? null,
      title: ask.title ?? null,
      description: ask.description ?? null,
      suggestions: ask.suggestions ?? null,
      agentId: ask.agentID ?? null,
      createdAt: now,
      expiresAt: now + handle.spec.approvalTimeoutS * 1000,
      resolvedAt: null,
      decisionReason: null,
      decidedBy: null,
      message: null
    }
    let resolveSettled!: (o: Outcome) => void
    const settled = new Promise<Outcome>(resolve => { resolveSettled = resolve })
    let done = false
    const settle = (o: Outcome): boolean => {
      if (done) return false
      done = true
      resolveSettled(o)
      return true
    }
    let resolveRecorded!: (r: ApprovalRecord) => void
    const recorded = new Promise<ApprovalRecord>(resolve => { resolveRecorded = resolve })
    this.waiting.set(record.id, { record, handle, settle, recorded })
    await this.save(handle, record)
    handle.push('approval_requested', {
      approval_id: record.id,
      tool_name: toolName,
      input,
      tool_use_id: record.toolUseId,
      agent_id: record.agentId,
      title: record.title,
      description: record.description,
      suggestions: record.suggestions,
      expires_at: new Date(record.expiresAt).toISOString()
    })
    this.onAsked(handle, record)
    const timer = setTimeout(() => { settle({ reason: 'timed_out' }) }, record.expiresAt - now)
    timer.unref()
    const runEnded = (): void => { settle({ reason: 'run_ended' }) }
    handle.onEnd(runEnded)
    ask.signal.addEventListener('abort', runEnded, { once: true })
    const { answer, reason } = await settled
    clearTimeout(timer)
    ask.signal.removeEventListener('abort', runEnded)
    this.waiting.delete(record.id)

    const allow = answer?.decision === 'allow'
    const message = answer?.message ?? (reason === 'timed_out'
      ? `Nobody answered this permission request within ${handle.spec.approvalTimeoutS} s: denied.`
      : reason === 'run_ended' ? 'The run ended before this permission request was answered.' : `Denied by ${answer?.by ?? 'the operator'}.`)
    Object.assign(record, {
      status: allow ? 'allowed' : 'denied',
      resolvedAt: Date.now(),
      decisionReason: reason,
      decidedBy: answer?.by ?? null,
      message: allow ? (answer?.message ?? null) : message
    })
    await this.save(handle, record)
    handle.push('approval_resolved', {
      approval_id: record.id,
      decision: allow ? 'allow' : 'deny',
      reason,
      key_name: record.decidedBy,
      message: record.message
    })
    resolveRecorded(record)
    if (!allow) return { behavior: 'deny', message, toolUseID: ask.toolUseID }
    const always: PermissionUpdate[] = answer?.always === true
      ? (ask.suggestions !== undefined && ask.suggestions.length > 0 ? ask.suggestions : [{ type: 'addRules', rules: [{ toolName }], behavior: 'allow', destination: 'session' }])
      : []
    return {
      behavior: 'allow',
      updatedInput: answer?.updatedInput ?? input,
      ...(always.length > 0 ? { updatedPermissions: always } : {}),
      toolUseID: ask.toolUseID
    }
  }

  /** Answer a pending approval of `runId`; 404 when there is none, 409 when already settled. */
  async answer (runId: string, approvalId: string, answer: ApprovalAnswer): Promise<ApprovalRecord> {
    const w = this.waiting.get(approvalId)
    if (w !== undefined && w.record.runId === runId) {
      if (!w.settle({ answer, reason: 'answered' })) throw new ApprovalResolved(`approval ${approvalId} was already settled`)
      return await w.recorded
    }
    const stored = await this.store.getApproval(approvalId)
    if (stored === undefined || stored.runId !== runId) throw new ApprovalNotFound(`no approval ${approvalId} on run ${runId}`)
    throw new ApprovalResolved(`approval ${approvalId} was already ${stored.status} (${stored.decisionReason ?? 'answered'})`)
  }

  private async save (handle: RunHandle, record: ApprovalRecord): Promise<void> {
    try {
      await this.store.saveApproval({ ...record })
    } catch (err) {
      handle.log.error({ err }, 'recording an approval failed')
    }
  }
}
