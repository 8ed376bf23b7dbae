// Rich text through the server: an offline delete meets a concurrent format and is undone, and
// every replica, a late joiner included, must end with the same content, formatting and delete
// set. With `record FILE` the converged state is written to FILE; `check FILE` opens a fresh
// client (after a restart, say) and compares it with what was recorded.
//   node format-undo.mjs <server url of a room> [record FILE | check FILE]

import { writeFileSync, readFileSync } from 'node:fs'
import {
  Y, args, assertEqual, connect, main, stepTo, synced
} from './lib.mjs'
import { quiesce, replicaState, assertReplicasEqual } from './replicas.mjs'

const [base, mode, file] = args(1, '<ws://HOST/v1/rooms/ROOM/yjs> [record FILE | check FILE]')
const DOC = 'rich/format-undo'

main('format-undo', async () => {
  if (mode === 'check') {
    stepTo('a fresh client reads the document')
    const e = await connect(base, DOC, { name: 'e' })
    await quiesce([e])
    const want = JSON.parse(readFileSync(file, 'utf8'))
    assertEqual(JSON.stringify(replicaState(e)), JSON.stringify(want), 'the document after the restart')
    return
  }

  stepTo('a, b and c sync; a writes "hello world"')
  const a = await connect(base, DOC, { name: 'a' })
  const b = await connect(base, DOC, { name: 'b' })
  const c = await connect(base, DOC, { name: 'c' })
  a.doc.getText('text').insert(0, 'hello world')
  await quiesce([a, b, c])
  for (const x of [b, c]) assertEqual(x.doc.getText('text').toString(), 'hello world', `${x.name}'s text`)

  stepTo('c goes offline and deletes "world"; b formats it bold')
  const ws = c.provider.ws
  const closed = new Promise((resolve) => ws.once('close', resolve))
  c.provider.disconnect()
  await closed
  const undo = new Y.UndoManager(c.doc.getText('text'))
  c.doc.getText('text').delete(6, 5)
  b.doc.getText('text').format(6, 5, { bold: true })
  await quiesce([a, b])

  stepTo('c reconnects and syncs, then undoes its delete')
  c.provider.connect()
  await synced(c)
  await quiesce([a, b, c])
  undo.undo()
  await quiesce([a, b, c])

  stepTo('a late joiner d')
  const d = await connect(base, DOC, { name: 'd' })
  await quiesce([a, b, c, d])
  assertReplicasEqual([a, b, c, d])
  assertEqual(a.doc.getText('text').toString(), 'hello world', 'the text after the undo')
  if (mode === 'record') writeFileSync(file, JSON.stringify(replicaState(a)))
})
