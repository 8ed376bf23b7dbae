// A stock y-websocket editor on a thread: it sees a message posted over REST live, its own
// message under its own name reaches the room, and its edit of another's message is refused
// with permission-denied and reaches no one.
//   node thread.mjs <ws://HOST/v1/rooms/ROOM/yjs> <http://HOST/v1/rooms/ROOM> <alice token> <bob token>

import { Y, args, assertEqual, assert, connect, main, stepTo, waitFor } from './lib.mjs'

const [base, rest, alice, bob] =
  args(4, '<ws://HOST/v1/rooms/ROOM/yjs> <http://HOST/v1/rooms/ROOM> <token> <token>')
const THREAD = 'chats/live.thread'

async function call (tool, token, body) {
  const res = await fetch(`${rest}/threads/${tool}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body)
  })
  const answer = await res.json()
  assertEqual(res.status, 200, `threads.${tool}: ${JSON.stringify(answer)}`)
  return answer
}

/** The thread's messages as "author: text", as a replica holds them. */
function messages (client) {
  const list = client.doc.get('xml', Y.XmlElement).toArray()
    .find((n) => n instanceof Y.XmlElement && n.nodeName === 'messages')
  if (!list) return []
  return list.toArray().filter((n) => n instanceof Y.XmlElement)
    .map((m) => `${m.getAttribute('author_name')}: ${m.getAttribute('text')}`)
}

/** Reads the thread over REST until `done(page)` holds (polling: REST has no event). */
async function untilRead (description, done) {
  const deadline = Date.now() + 20_000
  for (;;) {
    const page = await call('read', bob, { path: THREAD })
    if (done(page)) return page
    assert(Date.now() < deadline, `timed out waiting for ${description}: ${JSON.stringify(page)}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

main('thread', async () => {
  await call('create', bob, { path: THREAD })
  const editor = await connect(base, THREAD, { name: 'editor', options: { params: { token: alice } } })

  stepTo('a message posted over REST appears live')
  await call('post', bob, { path: THREAD, text: 'from rest' })
  await waitFor('the posted message', () => messages(editor).includes('bob: from rest'), { sources: [editor] })

  stepTo("the editor's own message reaches the room")
  const list = editor.doc.get('xml', Y.XmlElement).toArray().find((n) => n.nodeName === 'messages')
  const mine = new Y.XmlElement('message')
  mine.setAttribute('$id', 'from-editor')
  mine.setAttribute('text', 'from the editor')
  mine.setAttribute('author_name', 'alice')
  list.push([mine])
  await untilRead('the room to hold it', (page) =>
    page.messages.some((m) => m.message.text === 'from the editor' && m.message.author_name === 'alice'))

  stepTo("its edit of another's message is refused")
  const warnings = []
  const warn = console.warn
  console.warn = (...w) => { warnings.push(w.join(' ')) }
  const theirs = list.toArray().find((m) => m.getAttribute('author_name') === 'bob')
  theirs.setAttribute('text', 'vandalised')
  await waitFor('the permission-denied message', () => warnings.some((w) => /Permission denied/.test(w) && /only its author changes a message/.test(w)), { sources: [editor] })
  console.warn = warn
  const page = await call('read', bob, { path: THREAD })
  const texts = page.messages.map((m) => `${m.message.author_name}: ${m.message.text}`)
  assertEqual(texts.join(' | '), 'bob: from rest | alice: from the editor', 'what the room holds')
  assert(!texts.some((t) => /vandalised/.test(t)), 'the refused edit reached no one')
})
