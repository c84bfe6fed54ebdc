// The e2e app as a Next.js custom server with a WebSocket endpoint, the way real Next.js apps
// add one (Next.js route handlers cannot upgrade): Next's request handler for every HTTP
// request, the `ws` package for upgrades to /ws. Each socket first sends what the app saw
// ({"cookie": <the handshake's Cookie header>}), then echoes every message.
//   node app/server.mjs HOST PORT   (after `next build app`; NODE_ENV=production)
import { createServer } from 'node:http'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import next from 'next'
import { WebSocketServer } from 'ws'

const [hostname = '127.0.0.1', port = '3000'] = process.argv.slice(2)
const dir = path.dirname(fileURLToPath(import.meta.url))
const app = next({ dev: false, dir, hostname, port: Number(port) })
await app.prepare()
const handle = app.getRequestHandler()

const server = createServer((req, res) => handle(req, res))
const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 })
server.on('upgrade', (req, socket, head) => {
  const { pathname } = new URL(req.url, 'http://x')
  if (pathname !== '/ws') {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
    return
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.send(JSON.stringify({ cookie: req.headers.cookie || '' }))
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
  })
})
server.listen(Number(port), hostname, () => console.log(`server.mjs: ready on http://${hostname}:${port}`))
