// Stock y-websocket providers with participant tokens: a token in `params` (the `?token=` form)
// and in the `meshagent-room.<jwt>` subprotocol both sync; a refused token is closed with 4401
// and the provider stops reconnecting; a read-only participant syncs and its edit is refused;
// `.room/participants` shows everyone live to a stock Yjs client; honest providers, which
// re-broadcast each other's awareness, all see each other.
//   node auth.mjs <server url of a room> <valid token> <other valid token> <refused token>
//                 <read-only token (notes/*)>

import {
  Y, args, assertEqual, assert, connect, main, open, stepTo, waitFor, textsConverge
} from './lib.mjs'
import { quiesce } from './replicas.mjs'

const [base, alice, bob, refused, reader] =
  args(5, '<ws://HOST/v1/rooms/ROOM/yjs> <token> <token> <refused token> <read-only token>')

main('auth', async () => {
  stepTo('a token in params and one in the subprotocol both sync')
  const a = await connect(base, 'notes/readme', { name: 'a(params)', options: { params: { token: alice } } })
  const b = await connect(base, 'notes/readme', {
    name: 'b(subprotocol)',
    options: { protocols: [`meshagent-room.${bob}`] }
  })
  a.doc.getText('text').insert(0, 'hello')
  assertEqual(await textsConverge([a, b]), 'hello', 'the text through both')

  stepTo('a refused token is closed with 4401 and the provider stops')
  const r = open(base, 'notes/readme', { name: 'refused', options: { params: { token: refused } } })
  r.closing = true
  const closed = new Promise((resolve) => r.provider.on('closed', resolve))
  const event = await closed
  assertEqual(event.code, 4401, 'the close code of a refused token')
  assert(r.provider.shouldConnect === false, 'the provider gave up after a final close code')
  assert(r.provider.ws === null, 'no socket is left open or opening')
  assertEqual(r.doc.getText('text').toString(), '', 'no document data before the close')

  stepTo('a read-only participant syncs, and its edit is refused')
  const warnings = []
  const warn = console.warn
  console.warn = (...w) => { warnings.push(w.join(' ')) }
  const ro = await connect(base, 'notes/readme', { name: 'reader', options: { params: { token: reader } } })
  await waitFor('the reader to see the text', () => ro.doc.getText('text').toString() === 'hello', { sources: [ro] })
  ro.doc.getText('text').insert(0, 'vandal ')
  await waitFor('the permission-denied message', () => warnings.some((w) => /Permission denied/.test(w)), { sources: [ro] })
  console.warn = warn
  await quiesce([a, b, ro])
  assertEqual(a.doc.getText('text').toString(), 'hello', 'the writers never see a refused edit')

  stepTo('.room/participants shows everyone to a stock client')
  const watcher = await connect(base, '.room/participants', { name: 'watcher', options: { params: { token: alice } } })
  const names = () => [...watcher.doc.getMap('participants').values()].map((p) => p.name).sort()
  const aliceShown = () => [...watcher.doc.getMap('participants').values()].find((p) => p.name === 'alice')
  // Alice has two connections: her editor and the watcher.
  await waitFor('every participant to be shown', () => names().join() === 'alice,bob,reader' &&
    aliceShown().connections.length === 2, {
    sources: [watcher],
    detail: () => `  shown: ${names().join()}; alice's connections: ${aliceShown()?.connections?.length}`
  })
  b.closing = true
  b.provider.destroy()
  await waitFor('bob to leave', () => names().join() === 'alice,reader', { sources: [watcher] })

  stepTo('honest providers see each other\'s awareness')
  for (const c of [a, ro]) c.awareness.setLocalStateField('user', { name: c.name })
  await waitFor('every state everywhere', () => [a, ro].every((c) =>
    [a, ro].every((o) => c.awareness.getStates().get(o.doc.clientID)?.user?.name === o.name)), { sources: [a, ro] })
  await quiesce([a, ro])
  assert(Y.encodeStateVector(a.doc).length > 0, 'a still holds its document')
})
