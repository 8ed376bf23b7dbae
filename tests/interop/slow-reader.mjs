// A stock provider closed for reading too slowly (4508, a transient code) reconnects by itself
// and resyncs: it stops reading, a writer floods the document until the server gives up on it,
// then it reads again, sees the close, reconnects, and ends with everything.
//   node slow-reader.mjs <server url of a room> <http url of the server's /metrics>

import { args, assertEqual, connect, main, stepTo, synced, textsConverge, waitFor } from './lib.mjs'

const [base, metricsUrl] = args(2, '<ws://HOST/v1/rooms/ROOM/yjs> <http://HOST/metrics>')
const DOC = 'slow/doc'

async function slowCloses () {
  const text = await (await fetch(metricsUrl)).text()
  const line = text.split('\n').find((l) => l.startsWith('roomd_closes_total{code="4508"'))
  return line ? Number(line.split(' ').pop()) : 0
}

main('slow-reader', async () => {
  stepTo('a reader and a writer sync')
  const reader = await connect(base, DOC, { name: 'reader' })
  const writer = await connect(base, DOC, { name: 'writer' })
  const closes = []
  reader.provider.on('connection-close', (event) => { if (event) closes.push(event.code) })
  // The close is the server's decision: not a failure of the scenario.
  reader.closing = true

  stepTo('the reader stops reading; the writer floods')
  reader.provider.ws.pause()
  const chunk = 'x'.repeat(16 * 1024)
  let sent = 0
  while (await slowCloses() === 0) {
    for (let i = 0; i < 50; i++) {
      writer.doc.getText('text').insert(0, chunk)
      sent++
    }
    await new Promise((resolve) => setTimeout(resolve, 20)) // letting the socket drain, then polling a counter
    if (sent > 4000) throw new Error('the server never closed the slow reader')
  }

  stepTo('the reader reads again, sees 4508, reconnects and resyncs')
  reader.provider.ws.resume()
  await waitFor('the close to reach the reader', () => closes.length > 0, { sources: [reader] })
  assertEqual(closes[0], 4508, 'the close code of a slow reader')
  await waitFor('the reader to reconnect', () => reader.provider.wsconnected, { sources: [reader] })
  await synced(reader)
  reader.closing = false
  const text = await textsConverge([reader, writer])
  assertEqual(text.length, sent * chunk.length, 'everything the writer sent')
})
