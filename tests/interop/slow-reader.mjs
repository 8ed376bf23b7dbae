// A stock provider closed for reading too slowly (4508, a transient code) reconnects by itself
// and resyncs: it stops reading while a writer floods the document, until the server gives up
// on it; then it reads again, sees the close, reconnects, and ends with everything.
//
// The writer is a bare WebSocket speaking y-sync (updates of a document of its own), which
// reads and drops whatever the server sends it: it never falls behind, whatever the load.
// The server's decision is read from the room's participants: the reader has left once the
// server closed its connection.
//   node slow-reader.mjs <server url of a room> <http url of the room's participants>
//                        <reader's token> <writer's token>

import WebSocket from 'ws'
import * as encoding from 'lib0/encoding'
import { Y, args, assertEqual, connect, main, stepTo, synced, waitFor } from './lib.mjs'

const [base, participantsUrl, readerToken, writerToken] =
  args(4, '<ws://HOST/v1/rooms/ROOM/yjs> <http://HOST/v1/rooms/ROOM/participants> <token> <token>')
const DOC = 'slow/doc'
// The reader's kernel buffers hold megabytes before the server's writes block; all of it is
// read, then resynced, after the close: these steps may take a while in a debug build.
const LONG_MS = 80_000

async function readerPresent () {
  const answer = await fetch(participantsUrl, { headers: { authorization: `Bearer ${writerToken}` } })
  const { participants } = await answer.json()
  return participants.some((p) => p.name === 'reader')
}

/** A sync update frame (y-protocols: message 0, sub-type 2). */
function updateFrame (update) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, 0)
  encoding.writeVarUint(e, 2)
  encoding.writeVarUint8Array(e, update)
  return encoding.toUint8Array(e)
}

main('slow-reader', async () => {
  stepTo('a reader syncs; a bare writer connects')
  const reader = await connect(base, DOC, { name: 'reader', options: { params: { token: readerToken } } })
  const closes = []
  reader.provider.on('connection-close', (event) => { if (event) closes.push(event.code) })
  // The close is the server's decision: not a failure of the scenario.
  reader.closing = true
  const writer = new WebSocket(`${base}/${DOC}?token=${writerToken}`)
  await new Promise((resolve, reject) => { writer.once('open', resolve); writer.once('error', reject) })
  writer.on('message', () => {})
  let writerClose = null
  writer.on('close', (code, reason) => { writerClose = `${code} ${reason}` })
  const source = new Y.Doc()
  const outgoing = []
  source.on('update', (u) => outgoing.push(u))

  stepTo('the reader stops reading; the writer floods')
  reader.provider.ws.pause()
  const chunk = 'x'.repeat(4 * 1024)
  let sent = 0
  // Small batches, the participants read between them, so that the reader reads again soon
  // after the server gives up on it; and a turn of the event loop after each, in which the
  // writer reads what it is sent.
  while (await readerPresent()) {
    for (let i = 0; i < 20; i++) {
      source.getText('text').insert(0, chunk)
      writer.send(updateFrame(outgoing.shift()))
      sent++
    }
    await new Promise((resolve) => setImmediate(resolve))
    if (sent > 50_000) throw new Error('the server never closed the slow reader')
  }

  stepTo('the reader reads again, sees 4508, reconnects and resyncs')
  reader.provider.ws.resume()
  await waitFor('the close to reach the reader', () => closes.length > 0, {
    sources: [reader],
    timeoutMs: LONG_MS,
    detail: () => `  reader socket state ${reader.provider.ws?.readyState}, paused ${reader.provider.ws?.isPaused}, ` +
      `received ${reader.doc.getText('text').length} characters; writer state ${writer.readyState}`
  })
  assertEqual(closes[0], 4508, 'the close code of a slow reader')
  await waitFor('the reader to reconnect', () => reader.provider.wsconnected, { sources: [reader], timeoutMs: LONG_MS })
  await synced(reader, LONG_MS)
  assertEqual(writerClose, null, 'the writer is still connected (it reads all it is sent)')
  const want = sent * chunk.length
  await waitFor('the reader to hold everything', () => reader.doc.getText('text').length === want, {
    sources: [reader],
    timeoutMs: LONG_MS,
    detail: () => `  reader holds ${reader.doc.getText('text').length} of ${want} characters; closes ${closes}`
  })
  assertEqual(reader.doc.getText('text').toString(), source.getText('text').toString(), 'the texts')
  writer.close()
}, { overallMs: 110_000 })
