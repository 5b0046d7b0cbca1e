// Approvals across runs, sessions (list, transcript, rename, fork, delete, continue), and the
// server's health.

import { api, attachmentsOf, health } from './api.js'
import { alertBox, append, asText, field, h, replace, when } from './dom.js'
import { approvalButtons } from './runs.js'

/** `#/approvals`: every pending approval this key may answer, across runs. */
export function approvalsPage (main, _params, ctx) {
  document.title = 'Approvals · Claude Code console'
  const alert = alertBox()
  const list = h('div', { class: 'approvals' })
  const answered = new Set()

  async function load () {
    try {
      const { approvals } = await api('/approvals?status=pending&limit=500', { signal: ctx.signal })
      alert.clear()
      const pending = approvals.filter(a => !answered.has(a.approval_id))
      replace(list, pending.length === 0
        ? h('p', { class: 'muted', text: 'Nothing waits for an answer.' })
        : pending.map(a => {
          const card = h('article', { class: 'card approval' },
            h('h2', { text: a.tool_name }),
            h('p', { class: 'muted' }, 'Run ', h('a', { href: `#/runs/${a.run_id}`, text: a.run_id }), ` · key ${a.key_name ?? '—'} · asked ${when(a.created_at)}`),
            a.title ? h('p', { text: a.title }) : null,
            h('pre', { text: asText(a.input) }),
            approvalButtons(a.run_id, a.approval_id, () => {
              answered.add(a.approval_id)
              card.remove()
              ctx.refreshApprovals()
              void load()
            }))
          return card
        }))
    } catch (err) {
      if (!ctx.signal.aborted) alert.show(`Could not list approvals: ${err.message}`)
    }
  }

  append(main, h('h1', { text: 'Approvals' }), alert.el, list)
  void load()
  // Not redrawn under the user's pointer while nothing changed: only when the set differs.
  let last = ''
  ctx.every(3000, async () => {
    try {
      const { approvals } = await api('/approvals?status=pending&limit=500', { signal: ctx.signal })
      const now = approvals.map(a => a.approval_id).join()
      if (now !== last) {
        last = now
        await load()
      }
    } catch {}
  })
}

/** `#/sessions`: the sessions this key may see, most recently active first. */
export function sessionsPage (main, _params, ctx) {
  document.title = 'Sessions · Claude Code console'
  const alert = alertBox()
  const body = h('tbody')
  let cursor = null
  const more = h('button', { type: 'button', class: 'secondary', text: 'More', hidden: true, onclick: () => { void load(true) } })

  async function load (next = false) {
    try {
      const q = new URLSearchParams({ limit: '50' })
      if (next && cursor !== null) q.set('cursor', cursor)
      const page = await api(`/sessions?${q}`, { signal: ctx.signal })
      cursor = page.next_cursor
      more.hidden = cursor === null
      const rows = page.sessions.map(s => h('tr', {},
        h('td', {}, h('a', { href: `#/sessions/${s.session_id}`, text: s.title ?? s.session_id })),
        h('td', { class: 'path', text: s.working_directory }),
        h('td', { text: when(s.updated_at) }),
        h('td', { text: String(s.run_count) }),
        h('td', { text: s.busy ? 'busy' : '' })))
      if (next) append(body, rows)
      else replace(body, rows.length > 0 ? rows : h('tr', {}, h('td', { colspan: 5, class: 'empty', text: 'No sessions yet.' })))
    } catch (err) {
      if (!ctx.signal.aborted) alert.show(`Could not list sessions: ${err.message}`)
    }
  }

  append(main,
    h('h1', { text: 'Sessions' }),
    alert.el,
    h('section', { class: 'card' },
      h('div', { class: 'scroll' }, h('table', { class: 'list' },
        h('thead', {}, h('tr', {}, ['Title', 'Working directory', 'Last active', 'Runs', ''].map(t => h('th', { scope: 'col', text: t })))),
        body)),
      more))
  void load()
}

/** One transcript message's content as text: text blocks, tool calls and their results. */
function messageText (message) {
  const content = message?.content ?? message
  if (typeof content === 'string') return content
  if (!Array.isArray(content)) return asText(content)
  return content.map(b => {
    if (b?.type === 'text') return b.text
    if (b?.type === 'tool_use') return `[${b.name}] ${asText(b.input)}`
    if (b?.type === 'tool_result') {
      const c = b.content
      return `[tool result${b.is_error === true ? ', error' : ''}] ${typeof c === 'string' ? c : Array.isArray(c) ? c.map(x => x?.type === 'text' ? x.text : `[${x?.type}]`).join('\n') : asText(c)}`
    }
    if (b?.type === 'thinking') return '[thinking]'
    if (b?.type === 'image') return '[image]'
    return asText(b)
  }).join('\n')
}

/** `#/sessions/<id>`: its transcript, rename, fork, delete, and a prompt to continue it. */
export function sessionPage (main, [id], ctx) {
  id = id.toLowerCase()
  document.title = `Session ${id.slice(0, 8)} · Claude Code console`
  const alert = alertBox()
  const heading = h('h1', { text: `Session ${id}` })
  const info = h('dl', { class: 'facts' })
  const transcript = h('div', { class: 'transcript', 'aria-label': 'Transcript' })
  const title = h('input', { type: 'text', name: 'title', required: true, maxlength: 500 })

  async function load () {
    let s
    try {
      s = await api(`/sessions/${id}`, { signal: ctx.signal })
    } catch (err) {
      if (!ctx.signal.aborted) alert.show(err.status === 404 ? 'No such session (or not one this key may see).' : `Could not load the session: ${err.message}`)
      return
    }
    heading.textContent = s.title ?? `Session ${id}`
    if (document.activeElement !== title) title.value = s.title ?? ''
    replace(info,
      h('dt', { text: 'Session' }), h('dd', { text: s.session_id }),
      h('dt', { text: 'Working directory' }), h('dd', { text: s.working_directory }),
      h('dt', { text: 'Created' }), h('dd', { text: when(s.created_at) }),
      h('dt', { text: 'Last active' }), h('dd', { text: when(s.updated_at) }),
      h('dt', { text: 'Runs' }), h('dd', {}, String(s.run_count), ' · ', h('a', { href: `#/runs/${s.last_run_id ?? ''}`, hidden: s.last_run_id === null, text: 'last run' })),
      h('dt', { text: 'State' }), h('dd', { text: s.busy ? 'a run is queued or running' : 'idle' }))
    const messages = []
    let cursor = null
    for (let pages = 0; pages < 20; pages++) {
      const q = new URLSearchParams({ limit: '1000' })
      if (cursor !== null) q.set('cursor', cursor)
      let page
      try {
        page = await api(`/sessions/${id}/messages?${q}`, { signal: ctx.signal })
      } catch (err) {
        if (!ctx.signal.aborted) alert.show(`Could not read the transcript: ${err.message}`)
        return
      }
      messages.push(...page.messages)
      cursor = page.next_cursor
      if (cursor === null) break
    }
    replace(transcript, messages.length === 0
      ? h('p', { class: 'muted', text: 'No messages yet.' })
      : messages.map(m => h('div', { class: `entry ${m.type}` },
        h('div', { class: 'who', text: `${m.type}${m.parent_tool_use_id ? ' (subagent)' : ''} · ${when(m.timestamp)}` }),
        h('div', { class: 'pre', text: messageText(m.message) }))))
  }

  const busy = async (button, fn) => {
    alert.clear()
    button.disabled = true
    try {
      await fn()
    } catch (err) {
      alert.show(err.message)
    } finally {
      button.disabled = false
    }
  }
  const rename = h('button', { type: 'submit', text: 'Rename' })
  const fork = h('button', {
    type: 'button',
    class: 'secondary',
    text: 'Fork',
    onclick: () => busy(fork, async () => {
      const copy = await api(`/sessions/${id}/fork`, { method: 'POST', body: {} })
      ctx.go(`#/sessions/${copy.session_id}`)
    })
  })
  const del = h('button', {
    type: 'button',
    class: 'danger',
    text: 'Delete',
    onclick: () => busy(del, async () => {
      if (!window.confirm('Delete this session and its transcript?')) return
      await api(`/sessions/${id}`, { method: 'DELETE' })
      ctx.go('#/sessions')
    })
  })

  const prompt = h('textarea', { name: 'prompt', rows: 3, required: true })
  const images = h('input', { type: 'file', name: 'images', accept: 'image/png,image/jpeg,image/gif,image/webp', multiple: true })
  const go = h('button', { type: 'submit', text: 'Continue' })
  const goAlert = alertBox()

  append(main,
    h('p', {}, h('a', { href: '#/sessions', text: '← All sessions' })),
    heading,
    alert.el,
    h('section', { class: 'card' }, info,
      h('form', {
        class: 'inline',
        onsubmit: (event) => {
          event.preventDefault()
          void busy(rename, async () => {
            await api(`/sessions/${id}`, { method: 'PATCH', body: { title: title.value } })
            await load()
          })
        }
      }, field('Title', title), h('div', { class: 'actions' }, rename, fork, del))),
    h('section', { class: 'card' }, h('h2', { text: 'Transcript' }), transcript),
    h('form', {
      class: 'card',
      onsubmit: async (event) => {
        event.preventDefault()
        goAlert.clear()
        go.disabled = true
        try {
          const attachments = await attachmentsOf(images.files ?? [])
          const run = await api('/runs', { method: 'POST', body: { prompt: prompt.value, session_id: id, ...(attachments.length > 0 ? { attachments } : {}) } })
          ctx.go(`#/runs/${run.id}`)
        } catch (err) {
          goAlert.show(`The run was not started: ${err.message}`)
        } finally {
          go.disabled = false
        }
      }
    }, h('h2', { text: 'Continue the session' }), field('Prompt', prompt), field('Images', images), goAlert.el, go))
  void load()
}

/** Flatten nested objects into dotted names: `limits.memory_max`. */
function flatten (value, prefix = '', out = []) {
  for (const [k, v] of Object.entries(value ?? {})) {
    const name = prefix === '' ? k : `${prefix}.${k}`
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) flatten(v, name, out)
    else out.push([name, v])
  }
  return out
}

const bytes = (n) => n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${n} B`

/** `#/server`: /health as a definition list, grouped, refreshed every few seconds. */
export function serverPage (main, _params, ctx) {
  document.title = 'Server · Claude Code console'
  const alert = alertBox()
  const box = h('div', { class: 'server' })
  const GROUPS = [['Service', null], ['Isolation', 'isolation'], ['Limits', 'limits'], ['Warm spares', 'warm'], ['Queue', 'runs'], ['Cluster', 'cluster']]

  const show = (name, v) => {
    if (v === null || v === undefined) return name.endsWith('_max') ? 'no limit' : '—'
    if (typeof v === 'number' && /memory_max|disk_max/.test(name)) return bytes(v)
    if (typeof v === 'boolean') return v ? 'yes' : 'no'
    return Array.isArray(v) ? v.map(asText).join(', ') : String(v)
  }

  async function load () {
    try {
      const hl = await health()
      alert.clear()
      replace(box, GROUPS.map(([label, key]) => {
        const value = key === null ? Object.fromEntries(Object.entries(hl).filter(([, v]) => v === null || typeof v !== 'object' || Array.isArray(v))) : hl[key]
        if (value === undefined) return key === 'cluster' ? h('section', { class: 'card' }, h('h2', { text: label }), h('p', { class: 'muted', text: 'Not in cluster mode (one instance, embedded store).' })) : null
        return h('section', { class: 'card' }, h('h2', { text: label }),
          h('dl', { class: 'facts' }, flatten(value).map(([k, v]) => [h('dt', { text: k }), h('dd', { text: show(k, v) })])))
      }))
    } catch (err) {
      if (!ctx.signal.aborted) alert.show(`Could not read /health: ${err.message}`)
    }
  }

  append(main, h('h1', { text: 'Server' }), alert.el, box)
  void load()
  ctx.every(5000, load)
}
