// The MeshAgent TypeScript SDK (`@meshagent/meshagent`, pinned by the lockfile) against roomd:
// it connects from the environment (MESHAGENT_ROOM_URL, MESHAGENT_ROOM, MESHAGENT_TOKEN), opens
// a document an editor wrote, sees the editor's paragraph, adds its own, logs to the developer
// log, and closes the document, which waits until roomd has closed its stream.
//   node meshagent-ts.cjs <document>
// A CommonJS script: the package's ESM build re-exports through `require`.

const { RoomClient } = require('@meshagent/meshagent')

const WAIT_MS = 20_000

function fail (message) {
  console.error(`FAIL meshagent-ts: ${message}`)
  process.exit(1)
}

async function until (what, cond) {
  const deadline = Date.now() + WAIT_MS
  while (!cond()) {
    if (Date.now() > deadline) fail(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

async function main () {
  const path = process.argv[2]
  const timer = setTimeout(() => fail('did not finish in time'), 3 * WAIT_MS)
  timer.unref()
  const room = new RoomClient()
  await room.start()
  if (!room.localParticipant?.id) fail('no participant id after connecting')
  const doc = await room.sync.open(path)
  const texts = () => doc.root.getChildren().map((c) => c.getAttribute?.('text'))
  await until("the editor's paragraph", () => texts().includes('from the editor'))
  doc.root.createChildElement('paragraph', { text: 'from typescript' })
  await room.sync.close(path)
  console.log(JSON.stringify(texts()))
  process.exit(0)
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)))
