// A stock y-websocket editor on a queue's document (`.queues/jobs`), beside a stock TypeScript
// SDK client that sends to the queue and consumes it: the editor sees the item waiting, then
// leased, then done, live; a send it appends to the inbox while offline is taken once when it
// reconnects, and the consumer receives it; its edit of an item's state is refused with
// permission-denied and reaches no one.
//   node queue.mjs <ws://HOST/v1/rooms/ROOM/yjs> <ws://HOST> <ROOM> <consumer token> <editor token>

import { createRequire } from 'node:module'
import { Y, args, assert, assertEqual, connect, cutConnection, main, stepTo, synced, waitFor } from './lib.mjs'

const require = createRequire(import.meta.url)
const [yjs, url, room, consumerToken, editorToken] =
  args(5, '<ws://HOST/v1/rooms/ROOM/yjs> <ws://HOST> <ROOM> <consumer token> <editor token>')
const DOC = '.queues/jobs'

function child (parent, tag) {
  return parent.toArray().find((n) => n instanceof Y.XmlElement && n.nodeName === tag)
}

/** The queue document's `items` or `inbox` entries, as attribute objects. */
function entries (client, tag) {
  const list = child(client.doc.get('xml', Y.XmlElement), tag)
  if (!list) return []
  return list.toArray().filter((n) => n instanceof Y.XmlElement).map((e) => e.getAttributes())
}

function itemOf (client, n) {
  return entries(client, 'items').find((a) => JSON.parse(a.message).n === n)
}

main('queue', async () => {
  process.env.MESHAGENT_ROOM_URL = url
  process.env.MESHAGENT_ROOM = room
  process.env.MESHAGENT_TOKEN = consumerToken
  const { RoomClient, JsonContent } = require('@meshagent/meshagent')
  const consumer = new RoomClient()
  await consumer.start()
  await consumer.queues.open('jobs')
  const editor = await connect(yjs, DOC, { name: 'editor', options: { params: { token: editorToken } } })

  stepTo('an item sent by the SDK is shown waiting')
  await consumer.queues.send('jobs', { n: 1 }, {})
  await waitFor('item 1 waiting', () => itemOf(editor, 1)?.state === 'waiting', { sources: [editor] })

  stepTo('taken with a lease, it is shown leased to its consumer')
  const leased = await consumer.invoke({
    toolkit: 'queues',
    tool: 'receive',
    arguments: { name: 'jobs', create: false, wait: false, lease_ms: 30000 }
  })
  assert(leased instanceof JsonContent, `a leased item: ${leased}`)
  assertEqual(JSON.stringify(leased.json.message), '{"n":1}', 'the leased message')
  await waitFor('item 1 leased', () => itemOf(editor, 1)?.state === 'leased', { sources: [editor] })
  assertEqual(itemOf(editor, 1).attempts, '1', 'its attempts')

  stepTo('its edit of an item is refused')
  const warnings = []
  const warn = console.warn
  console.warn = (...w) => { warnings.push(w.join(' ')) }
  const items = child(editor.doc.get('xml', Y.XmlElement), 'items')
  items.toArray()[0].setAttribute('state', 'done')
  await waitFor('the permission-denied message', () => warnings.some((w) => /Permission denied/.test(w) && /only the server writes a queue's items/.test(w)), { sources: [editor] })
  console.warn = warn

  stepTo('acknowledged, it is shown done')
  await consumer.invoke({ toolkit: 'queues', tool: 'ack', arguments: { receipt: leased.json.receipt } })
  // The refused edit was the editor's own: only the server's `done` counts, and it comes after
  // the acknowledgement.
  const fresh = await connect(yjs, DOC, { name: 'fresh', options: { params: { token: editorToken } } })
  await waitFor('item 1 done', () => itemOf(fresh, 1)?.state === 'done', { sources: [fresh] })

  stepTo('a send appended offline is taken once on reconnect')
  cutConnection(fresh)
  await waitFor('the connection cut', () => !fresh.provider.wsconnected && fresh.provider.ws === null, { sources: [fresh] })
  const inbox = child(fresh.doc.get('xml', Y.XmlElement), 'inbox')
  const send = new Y.XmlElement('send')
  send.setAttribute('$id', 'offline-1')
  send.setAttribute('message', JSON.stringify({ n: 2 }))
  inbox.push([send])
  fresh.closing = false
  fresh.provider.shouldConnect = true
  fresh.provider.connect()
  await synced(fresh)
  await waitFor('the send taken', () => entries(fresh, 'inbox').some((a) => a.$id === 'offline-1' && a.taken), { sources: [fresh] })
  const taken = entries(fresh, 'inbox').find((a) => a.$id === 'offline-1').taken
  await waitFor('item 2 waiting', () => itemOf(fresh, 2)?.state === 'waiting', { sources: [fresh] })
  assertEqual(itemOf(fresh, 2).seq, taken, 'the item the send became')
  const received = await consumer.queues.receive('jobs', { create: false, wait: false })
  assertEqual(JSON.stringify(received), '{"n":2}', 'the offline send, received')
  const list = await consumer.queues.list()
  assertEqual(JSON.stringify(list.map((q) => [q.name, q.size])), '[["jobs",0]]', 'the queue, empty')
  await waitFor('item 2 done', () => itemOf(fresh, 2)?.state === 'done', { sources: [fresh] })
  assertEqual(entries(fresh, 'items').filter((a) => JSON.parse(a.message).n === 2).length, 1, 'taken once')
  consumer.dispose()
})
