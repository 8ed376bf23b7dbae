// Comparing replicas exactly, and waiting until a set of connected providers is quiet, without
// asking the server for state: a barrier that resynced the clients would hand each one the
// server's whole delete set and hide a deletion the server failed to forward.

import { Y, canonical, waitFor } from './lib.mjs'

let barrier = 0

/**
 * Waits until every message any of `cs` has sent has reached all the others, and none of them
 * reacted with an edit of its own (a Yjs client cleans up formatting after a remote change, in a
 * transaction of its own that it sends on). In a round every client announces a new barrier
 * number in its awareness state; the server relays awareness in order with the document updates
 * of the same connection, so once each client has seen everyone's number, it holds everything
 * sent before it. A round in which no client made a local update ends the wait. Returns the
 * number of rounds.
 * @param {any[]} cs connected clients (see `open` in lib.mjs)
 */
export async function quiesce (cs, roundsMax = 50) {
  for (let round = 1; round <= roundsMax; round++) {
    let local = 0
    const offs = cs.map((c) => {
      const count = (_update, origin) => { if (origin !== c.provider) local++ }
      c.doc.on('update', count)
      return () => c.doc.off('update', count)
    })
    const mark = ++barrier
    try {
      for (const c of cs) c.awareness.setLocalStateField('barrier', mark)
      await waitFor(`barrier ${mark} to reach ${cs.map((c) => c.name).join(', ')}`,
        () => cs.every((y) => cs.every((x) => x === y ||
          y.awareness.getStates().get(x.doc.clientID)?.barrier === mark)), {
          sources: cs,
          detail: () => cs.map((y) => `  ${y.name} sees ${canonical(cs.map((x) =>
            y.awareness.getStates().get(x.doc.clientID)?.barrier ?? null))}`).join('\n')
        })
    } finally {
      for (const off of offs) off()
    }
    if (local === 0) return round
  }
  throw new Error(`${cs.map((c) => c.name).join(', ')} still editing after ${roundsMax} rounds`)
}

/** A client's delete set, as sorted [client, [[clock, len], ...]] pairs. */
export function deleteSet (doc) {
  const ds = Y.snapshot(doc).ds
  return [...ds.clients.entries()]
    .sort((x, y) => x[0] - y[0])
    .map(([client, items]) => [client, items.map((i) => [i.clock, i.len])])
}

/** What two replicas must agree on: every text's delta (formatting and embeds included), every
 * map, the state vector and the delete set. */
export function replicaState (c, texts = ['text'], maps = []) {
  return {
    texts: Object.fromEntries(texts.map((n) => [n, c.doc.getText(n).toDelta()])),
    maps: Object.fromEntries(maps.map((n) => [n, c.doc.getMap(n).toJSON()])),
    sv: [...Y.decodeStateVector(Y.encodeStateVector(c.doc)).entries()].sort((x, y) => x[0] - y[0]),
    ds: deleteSet(c.doc)
  }
}

/** Fails unless every client's `replicaState` is the same, naming what differs. */
export function assertReplicasEqual (cs, texts = ['text'], maps = []) {
  const states = cs.map((c) => replicaState(c, texts, maps))
  const first = canonical(states[0])
  for (let i = 1; i < cs.length; i++) {
    if (canonical(states[i]) === first) continue
    const parts = Object.keys(states[0])
      .filter((k) => canonical(states[0][k]) !== canonical(states[i][k]))
      .map((k) => `  ${k}:\n    ${cs[0].name}: ${canonical(states[0][k])}\n    ${cs[i].name}: ${canonical(states[i][k])}`)
    throw new Error(`${cs[i].name} diverged from ${cs[0].name}:\n${parts.join('\n')}`)
  }
}
