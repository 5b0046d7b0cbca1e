/* global location, FileReader */
// The API client: the key (kept in this tab's sessionStorage only, sent in a header, never in a
// URL, never logged), JSON calls, and a run's event stream over fetch (EventSource cannot send a
// header), resumed with Last-Event-ID after a drop.

const KEY = 'ccapi.key'

/**
 * The server's root, from where the console is served: `/prefix/console/` calls `/prefix/api/…`,
 * so the console works behind a proxy that mounts the server under a path.
 */
export const ROOT = (() => {
  const path = location.pathname
  const at = path.lastIndexOf('/console')
  return at >= 0 ? path.slice(0, at) : ''
})()

export const getKey = () => sessionStorage.getItem(KEY)
export const setKey = (key) => sessionStorage.setItem(KEY, key)
export const clearKey = () => sessionStorage.removeItem(KEY)

/** An API error: status, the problem's `code` and a sentence for people. */
export class ApiError extends Error {
  constructor (status, problem) {
    super(problem?.detail ?? problem?.title ?? `HTTP ${status}`)
    this.status = status
    this.code = problem?.code ?? null
  }
}

/** Listeners told when the key is refused (401), so the app signs out. */
const refusedListeners = new Set()
export const onRefused = (fn) => { refusedListeners.add(fn) }

function headers (extra = {}, key = getKey()) {
  return { ...(key !== null ? { 'X-API-Key': key } : {}), ...extra }
}

async function problemOf (res) {
  try {
    return await res.json()
  } catch {
    return null
  }
}

/**
 * Call the API at `path` (below /api). `body` is sent as JSON. Answers the parsed JSON (or text
 * for non-JSON answers, null for 204); throws ApiError otherwise.
 */
export async function api (path, { method = 'GET', body, accept, key, signal } = {}) {
  const res = await fetch(`${ROOT}/api${path}`, {
    method,
    headers: headers({
      ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}),
      ...(accept !== undefined ? { Accept: accept } : {})
    }, key ?? getKey()),
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    ...(signal !== undefined ? { signal } : {}),
    cache: 'no-store'
  })
  if (!res.ok) {
    const problem = await problemOf(res)
    if (res.status === 401 && key === undefined) for (const fn of refusedListeners) fn()
    throw new ApiError(res.status, problem)
  }
  if (res.status === 204) return null
  const type = res.headers.get('content-type') ?? ''
  return type.includes('json') ? await res.json() : await res.text()
}

/** `GET /health` (public). */
export async function health () {
  const res = await fetch(`${ROOT}/health`, { cache: 'no-store' })
  return await res.json()
}

/** Parse SSE frames out of `buffer`; returns the events and what is left of the buffer. */
export function parseFrames (buffer) {
  const events = []
  let end
  buffer = buffer.replace(/\r\n?/g, '\n')
  while ((end = buffer.indexOf('\n\n')) !== -1) {
    const frame = buffer.slice(0, end)
    buffer = buffer.slice(end + 2)
    const e = { id: null, event: 'message', data: '' }
    let dataLines = 0
    for (const line of frame.split('\n')) {
      if (line === '' || line.startsWith(':')) continue
      const i = line.indexOf(':')
      const name = i === -1 ? line : line.slice(0, i)
      const value = i === -1 ? '' : line.slice(i + 1).replace(/^ /, '')
      if (name === 'id') e.id = Number(value)
      else if (name === 'event') e.event = value
      else if (name === 'data') e.data += (dataLines++ > 0 ? '\n' : '') + value
    }
    if (dataLines > 0 || e.id !== null) events.push(e)
  }
  return { events, rest: buffer }
}

/**
 * Follow a run's events until its `result` (or `signal` aborts). Each event is handed to
 * `onEvent({ id, event, data })` once: after a network drop the stream resumes with
 * `Last-Event-ID` = the last id seen, and anything at or below it is dropped. `onState` hears
 * 'live', 'reconnecting' and 'ended'.
 */
export async function followRun (id, { onEvent, onState = () => {}, signal }) {
  let last = 0
  let delay = 500
  while (!signal.aborted) {
    try {
      const res = await fetch(`${ROOT}/api/runs/${encodeURIComponent(id)}/events`, {
        headers: headers({ Accept: 'text/event-stream', ...(last > 0 ? { 'Last-Event-ID': String(last) } : {}) }),
        cache: 'no-store',
        signal
      })
      if (!res.ok) {
        const problem = await problemOf(res)
        if (res.status === 401) for (const fn of refusedListeners) fn()
        if (res.status < 500) throw Object.assign(new ApiError(res.status, problem), { fatal: true })
        throw new ApiError(res.status, problem)
      }
      onState('live')
      delay = 500
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
      let buffer = ''
      let ended = false
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        const parsed = parseFrames(buffer + value)
        buffer = parsed.rest
        for (const e of parsed.events) {
          if (e.id !== null) {
            if (e.id <= last) continue
            last = e.id
          }
          let data
          try {
            data = JSON.parse(e.data)
          } catch {
            data = e.data
          }
          onEvent({ id: e.id, event: e.event, data })
          if (e.event === 'result') ended = true
        }
      }
      if (ended) {
        onState('ended')
        return
      }
    } catch (err) {
      if (signal.aborted) return
      if (err?.fatal === true) throw err
    }
    if (signal.aborted) return
    onState('reconnecting')
    await new Promise(resolve => setTimeout(resolve, delay))
    delay = Math.min(delay * 2, 10_000)
  }
}

/** Files from an `<input type=file>` as API attachments (base64 images). */
export async function attachmentsOf (files) {
  const out = []
  for (const file of files) {
    const url = await new Promise((resolve, reject) => {
      const reader = new FileReader()
      reader.onload = () => resolve(String(reader.result))
      reader.onerror = () => reject(reader.error ?? new Error('could not read ' + file.name))
      reader.readAsDataURL(file)
    })
    out.push({ type: 'image', media_type: file.type || 'image/png', data: url.slice(url.indexOf(',') + 1) })
  }
  return out
}
