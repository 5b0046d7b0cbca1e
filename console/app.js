/* global location, Notification */
// The console's shell: sign-in, navigation (with the pending approvals count, polled), and a
// hash router (#/runs, #/runs/<id>, #/approvals, #/sessions, #/sessions/<id>, #/server) that
// gives each screen an AbortSignal to stop its timers and streams when the user leaves it.

import { api, clearKey, getKey, onRefused, setKey, ApiError } from './api.js'
import { alertBox, field, h, replace } from './dom.js'
import { runPage, runsPage } from './runs.js'
import { approvalsPage, serverPage, sessionPage, sessionsPage } from './pages.js'

const main = document.getElementById('main')
const nav = document.getElementById('nav')
const POLL_MS = 3000

let view = null // { controller } of the screen shown
let approvalsTimer = null
let pendingCount = null
let refusedMessage = ''

const approvalsLink = h('a', { href: '#/approvals', text: 'Approvals' })

/** Everything a screen gets: where to render, its signal, a repeating timer that ends with it. */
function context (controller) {
  return {
    signal: controller.signal,
    every (ms, fn) {
      const timer = setInterval(() => { if (!controller.signal.aborted) void fn() }, ms)
      controller.signal.addEventListener('abort', () => clearInterval(timer))
    },
    refreshApprovals: () => { void pollApprovals() },
    go: (hash) => { location.hash = hash }
  }
}

/** Poll the pending approvals: the count in the navigation, a notification when it rises. */
async function pollApprovals () {
  if (getKey() === null) return
  let count
  try {
    count = (await api('/approvals?status=pending&limit=500')).approvals.length
  } catch {
    return
  }
  approvalsLink.textContent = count > 0 ? `Approvals (${count})` : 'Approvals'
  if (pendingCount !== null && count > pendingCount && 'Notification' in window && Notification.permission === 'granted') {
    const n = count - pendingCount
    // eslint-disable-next-line no-new
    new Notification('Claude Code: approval requested', { body: `${n} new tool approval${n > 1 ? 's' : ''} waiting`, tag: 'ccapi-approvals' })
  }
  pendingCount = count
}

function notificationsButton () {
  if (!('Notification' in window) || Notification.permission !== 'default') return null
  // Asked on a click only: browsers ignore (and users dislike) a permission prompt on load.
  const button = h('button', {
    type: 'button',
    class: 'link',
    text: 'Enable notifications',
    onclick: async () => {
      await Notification.requestPermission()
      button.remove()
    }
  })
  return button
}

function renderNav () {
  if (getKey() === null) {
    nav.hidden = true
    replace(nav)
    return
  }
  nav.hidden = false
  replace(nav,
    h('ul', {},
      h('li', {}, h('a', { href: '#/runs', text: 'Runs' })),
      h('li', {}, approvalsLink),
      h('li', {}, h('a', { href: '#/sessions', text: 'Sessions' })),
      h('li', {}, h('a', { href: '#/server', text: 'Server' }))),
    h('div', { class: 'nav-actions' },
      notificationsButton(),
      h('button', { type: 'button', class: 'link', text: 'Sign out', onclick: signOut })))
}

function signOut () {
  clearKey()
  pendingCount = null
  approvalsLink.textContent = 'Approvals'
  clearInterval(approvalsTimer)
  approvalsTimer = null
  location.hash = '#/'
  route()
}

function signInPage () {
  const alert = alertBox()
  alert.show(refusedMessage)
  refusedMessage = ''
  const key = h('input', { type: 'password', name: 'key', autocomplete: 'current-password', required: true })
  const button = h('button', { type: 'submit', text: 'Sign in' })
  const form = h('form', {
    class: 'card narrow',
    onsubmit: async (event) => {
      event.preventDefault()
      alert.clear()
      const value = key.value.trim()
      if (value === '') return
      button.disabled = true
      try {
        await api('/runs?limit=1', { key: value })
        setKey(value)
        key.value = ''
        if (location.hash === '' || location.hash === '#/' || location.hash === '#') location.hash = '#/runs'
        else route()
      } catch (err) {
        alert.show(err instanceof ApiError && (err.status === 401 || err.status === 403)
          ? 'The API key was refused. Check it and try again.'
          : `Could not reach the server: ${err.message}`)
      } finally {
        button.disabled = false
      }
    }
  },
  h('h1', { text: 'Sign in' }),
  h('p', { text: 'Sign in with an API key of this server. It is kept in this browser tab only, and forgotten when the tab closes.' }),
  field('API key', key),
  alert.el,
  button)
  replace(main, form)
  key.focus()
}

const routes = [
  [/^#\/runs\/([0-9a-f-]{36})$/i, runPage],
  [/^#\/runs$/, runsPage],
  [/^#\/approvals$/, approvalsPage],
  [/^#\/sessions\/([0-9a-f-]{36})$/i, sessionPage],
  [/^#\/sessions$/, sessionsPage],
  [/^#\/server$/, serverPage]
]

function route () {
  view?.controller.abort()
  view = null
  renderNav()
  if (getKey() === null) {
    document.title = 'Sign in · Claude Code console'
    signInPage()
    return
  }
  if (approvalsTimer === null) {
    void pollApprovals()
    approvalsTimer = setInterval(() => { void pollApprovals() }, POLL_MS)
  }
  const hash = location.hash
  const match = routes.map(([re, page]) => [re.exec(hash), page]).find(([m]) => m !== null)
  if (match === undefined) {
    location.replace('#/runs')
    return
  }
  const [m, page] = match
  for (const a of nav.querySelectorAll('a')) {
    if (hash.startsWith(a.getAttribute('href'))) a.setAttribute('aria-current', 'page')
    else a.removeAttribute('aria-current')
  }
  const controller = new AbortController()
  view = { controller }
  replace(main)
  page(main, m.slice(1), context(controller))
}

onRefused(() => {
  if (getKey() === null) return
  refusedMessage = 'The API key was refused. Sign in again.'
  signOut()
})

window.addEventListener('hashchange', route)
route()
