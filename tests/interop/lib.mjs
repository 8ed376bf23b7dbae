// Shared helpers for the interop scripts: the real `yjs` and `y-websocket` packages (the v3
// provider and the v2 provider) talking to a running roomd.
//
// Every script takes the server URL of a room as an argument, e.g.
//   node converge.mjs ws://127.0.0.1:8787/v1/rooms/my-room/yjs
// and the provider's room name is the document name. A script exits 0 when every check held,
// 1 with the failed check on stderr, and 2 on a usage error or when it did not finish within its
// overall timeout.

import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider as ProviderV3 } from 'y-websocket'
import { WebsocketProvider as ProviderV2 } from 'y-websocket-v2'

export { Y }

/** How long a single awaited condition may take. */
export const WAIT_MS = 20_000

/** How long a whole script may take (the Rust runner gives up after 60 s). */
export const OVERALL_MS = 50_000

const clients = []
// Every provider adds a process 'exit' listener; a scenario may open a hundred of them.
process.setMaxListeners(500)
let scenario = 'interop'
let step = 'starting'

/** Prints a progress line (shown by the Rust runner when the script fails). */
export function log (...args) {
  console.log(`[${scenario}]`, ...args)
}

/** Names the current step; a timeout or failure message reports it. */
export function stepTo (name) {
  step = name
  log(name)
}

/**
 * Runs `body` as the scenario `name` under a hard timeout and exits the process: 0 on success,
 * 1 on a failed check, 2 on the overall timeout.
 * @param {string} name
 * @param {() => Promise<void>} body
 * @param {{ overallMs?: number }} [opts]
 */
export function main (name, body, { overallMs = OVERALL_MS } = {}) {
  scenario = name
  const timer = setTimeout(() => {
    console.error(`FAIL ${scenario}: did not finish within ${overallMs} ms (step: ${step})`)
    process.exit(2)
  }, overallMs)
  timer.unref()
  process.on('unhandledRejection', fail)
  process.on('uncaughtException', fail)
  body().then(() => {
    for (const c of clients) c.provider.destroy()
    log('ok')
    process.exit(0)
  }, fail)
}

/** Reports `err` with the current step and exits 1. */
export function fail (err) {
  console.error(`FAIL ${scenario} (step: ${step}): ${err && err.stack ? err.stack : err}`)
  process.exit(1)
}

/** The script's positional arguments (after `node script.mjs`). */
export function args (count, usage) {
  const a = process.argv.slice(2)
  if (a.length < count) {
    console.error(`usage: node ${process.argv[1]} ${usage}`)
    process.exit(2)
  }
  return a
}

/**
 * A provider for document `docName` on the server URL `base`, wrapped with its doc and awareness.
 * `version` 3 is the `y-websocket` package, 2 the `y-websocket-v2` alias. Does not wait.
 * @param {string} base e.g. ws://127.0.0.1:PORT/v1/rooms/ROOM/yjs
 * @param {string} docName the provider's room name: the document name, which may contain `/`
 * `options` go to the provider as they are (`params`, `protocols`, …).
 * @param {{ version?: 2 | 3, doc?: Y.Doc, name?: string, options?: object }} [opts]
 */
export function open (base, docName, { version = 3, doc = new Y.Doc(), name, options = {} } = {}) {
  const Provider = version === 2 ? ProviderV2 : ProviderV3
  const provider = new Provider(base, docName, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    ...options
  })
  const client = {
    name: name ?? `${docName}#${clients.length}(v${version})`,
    version,
    doc,
    provider,
    awareness: provider.awareness,
    /** Set before cutting the socket on purpose: a close is then not a failure. */
    closing: false
  }
  // A connection ending without the provider closing it (a close code from the server, a dropped
  // or refused socket) is never part of a scenario: fail at once instead of timing out later.
  let lastError = ''
  provider.on('connection-error', (event) => {
    lastError = event && event.message ? ` (socket error: ${event.message})` : ''
  })
  provider.on('connection-close', (event) => {
    if (event && !client.closing) {
      fail(new Error(
        `${client.name}'s connection to ${provider.url} ended: close code ${event.code} ` +
        `${JSON.stringify(event.reason ?? '')}${lastError}`
      ))
    }
  })
  clients.push(client)
  return client
}

/** Opens a provider (see `open`) and waits until it is synced with the server. */
export async function connect (base, docName, opts = {}) {
  const client = open(base, docName, opts)
  await synced(client)
  return client
}

/** Waits until the client's provider has received the server's sync step 2. */
export function synced (client, timeoutMs = WAIT_MS) {
  return waitFor(`${client.name} to be synced`, () => client.provider.synced, {
    sources: [client],
    timeoutMs
  })
}

/**
 * Resolves once `predicate()` holds. It is checked at once, after every update of the sources'
 * documents and awareness, on their providers' status and sync events, and every 50 ms in case a
 * change comes through none of those. Rejects after `timeoutMs` with `description` and `detail()`.
 * @param {string} description what is awaited, for the error message
 * @param {() => boolean} predicate
 * @param {{ sources?: any[], timeoutMs?: number, detail?: () => string }} [opts]
 */
export function waitFor (description, predicate, { sources = clients, timeoutMs = WAIT_MS, detail } = {}) {
  return new Promise((resolve, reject) => {
    const subs = []
    const on = (emitter, event, fn) => {
      emitter.on(event, fn)
      subs.push(() => emitter.off(event, fn))
    }
    let settled = false
    const finish = (err) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      clearInterval(poll)
      for (const off of subs) off()
      if (err) reject(err)
      else resolve()
    }
    const check = () => {
      if (settled) return
      let ok
      try {
        ok = predicate()
      } catch (err) {
        finish(err)
        return
      }
      if (ok) finish()
    }
    const timer = setTimeout(() => {
      let more = ''
      try {
        more = detail ? `\n${detail()}` : ''
      } catch (err) {
        more = `\n(detail failed: ${err})`
      }
      finish(new Error(`timed out after ${timeoutMs} ms waiting for ${description}${more}`))
    }, timeoutMs)
    const poll = setInterval(check, 50)
    for (const s of sources) {
      on(s.doc, 'update', check)
      on(s.awareness, 'update', check)
      on(s.provider, 'sync', check)
      on(s.provider, 'status', check)
    }
    check()
  })
}

/** Waits until every client's text `name` has the same content, and returns it. */
export async function textsConverge (cs, name = 'text') {
  const texts = () => cs.map((c) => c.doc.getText(name).toString())
  await waitFor(`text "${name}" to converge on ${cs.map((c) => c.name).join(', ')}`,
    () => texts().every((t) => t === texts()[0]), {
      sources: cs,
      detail: () => cs.map((c, i) => `  ${c.name}: ${preview(texts()[i])}`).join('\n')
    })
  return texts()[0]
}

/** A short, bounded rendering of a string for error messages. */
export function preview (s, max = 200) {
  if (typeof s !== 'string') s = JSON.stringify(s)
  return s.length <= max
    ? JSON.stringify(s)
    : `${JSON.stringify(s.slice(0, max))}… (${s.length} chars)`
}

/** Fails unless `actual === expected` (strings, numbers), with a precise message. */
export function assertEqual (actual, expected, what) {
  if (actual === expected) return
  let where = ''
  if (typeof actual === 'string' && typeof expected === 'string') {
    let i = 0
    while (i < actual.length && i < expected.length && actual[i] === expected[i]) i++
    where = `\n  lengths ${actual.length} vs ${expected.length}, first difference at ${i}:` +
      `\n  actual   …${preview(actual.slice(i, i + 60))}` +
      `\n  expected …${preview(expected.slice(i, i + 60))}`
  }
  throw new Error(`${what}: got ${preview(actual)}, expected ${preview(expected)}${where}`)
}

/** Fails unless the two values have the same canonical JSON (object keys sorted). */
export function assertSameJSON (actual, expected, what) {
  assertEqual(canonical(actual), canonical(expected), what)
}

/** Fails unless `cond` holds. */
export function assert (cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`)
}

/** JSON with object keys sorted, so equal maps compare equal whatever their insertion order. */
export function canonical (value) {
  return JSON.stringify(value, (_k, v) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
      : v)
}

/** A client's state vector as a plain object { clientID: clock }. */
export function stateVector (client) {
  return Object.fromEntries(Y.decodeStateVector(Y.encodeStateVector(client.doc)))
}

/**
 * Cuts the client's socket without a close handshake and without the provider's goodbye
 * (as a crashed process or a lost network would), and keeps the provider from reconnecting.
 */
export function cutConnection (client) {
  client.closing = true
  client.provider.shouldConnect = false
  const ws = client.provider.ws
  assert(ws !== null, `${client.name} has a socket to cut`)
  ws.terminate()
}

/** A seeded pseudo-random generator (mulberry32): a function returning floats in [0, 1). */
export function rng (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
