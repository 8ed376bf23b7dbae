// Awareness through the server: a state set by one provider reaches the others and newcomers;
// it disappears for the others when its provider is destroyed, and also when its socket is cut
// without any goodbye (the server removes a closed connection's states and tells the others).
//   node awareness.mjs <server url of a room>

import { assertSameJSON, args, canonical, connect, cutConnection, main, stepTo, waitFor } from './lib.mjs'

const [base] = args(1, '<ws://HOST/v1/rooms/ROOM/yjs>')
const DOC = 'presence/doc'

/** The remote state `of` as `observer` sees it, or undefined. */
const seen = (observer, of) => observer.awareness.getStates().get(of.doc.clientID)

/** Waits until `observer` sees exactly `state` for `of` (undefined: no state). */
const until = (observer, of, state) =>
  waitFor(`${observer.name} to see ${of.name}'s state ${JSON.stringify(state) ?? '(removed)'}`,
    () => canonical(seen(observer, of)) === canonical(state), {
      sources: [observer],
      detail: () => `  ${observer.name} sees ${JSON.stringify(seen(observer, of))}`
    })

main('awareness', async () => {
  stepTo('a (v3) and b (v2) connect')
  const a = await connect(base, DOC, { version: 3, name: 'a(v3)' })
  const b = await connect(base, DOC, { version: 2, name: 'b(v2)' })

  stepTo('a and b set their states and see each other\'s')
  const aState = { user: { name: 'alice', color: '#ff0000' }, cursor: { anchor: 1, head: 4 } }
  const bState = { user: { name: 'bob', color: '#00ff00' } }
  a.awareness.setLocalState(aState)
  b.awareness.setLocalState(bState)
  await until(b, a, aState)
  await until(a, b, bState)

  stepTo('a changes its state; b sees the change')
  const aState2 = { ...aState, cursor: { anchor: 7, head: 7 } }
  a.awareness.setLocalStateField('cursor', aState2.cursor)
  await until(b, a, aState2)

  stepTo('c (v3) joins and gets both states from the server')
  const c = await connect(base, DOC, { version: 3, name: 'c(v3)' })
  await until(c, a, aState2)
  await until(c, b, bState)

  stepTo('a is destroyed; b and c see its state removed')
  a.provider.destroy()
  await until(b, a, undefined)
  await until(c, a, undefined)

  stepTo('d (v2) joins with a state; then its socket is cut without a goodbye')
  const d = await connect(base, DOC, { version: 2, name: 'd(v2)' })
  const dState = { user: { name: 'dave' } }
  d.awareness.setLocalState(dState)
  await until(b, d, dState)
  await until(c, d, dState)
  cutConnection(d)
  // Only the server can tell b and c: d sent nothing before its socket went away.
  await until(b, d, undefined)
  await until(c, d, undefined)

  stepTo('e (v3) joins: the server knows only b\'s and c\'s states')
  const cState = { user: { name: 'carol' } }
  c.awareness.setLocalState(cState)
  await until(b, c, cState)
  const e = await connect(base, DOC, { version: 3, name: 'e(v3)' })
  await until(e, b, bState)
  await until(e, c, cState)
  const remote = Object.fromEntries([...e.awareness.getStates()]
    .filter(([id]) => id !== e.doc.clientID))
  assertSameJSON(remote, { [b.doc.clientID]: bState, [c.doc.clientID]: cState },
    'the states e received')
})
