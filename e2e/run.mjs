// make e2e: a real Next.js app (e2e/app, built by run.sh) and headless Chromium, first behind
// etls-proxy (steps 1-5, pass/fail), then the same build without the proxy but with its
// middleware doing the seeds' check and refresh (measured, for the comparison table).
// Everything on 127.0.0.1; every wait is bounded; exits non-zero naming the step that failed.
//
// Env: E2E_BIN (directory of etls-proxy and etls-demo, default ../target/debug),
//      CHROMIUM (default /usr/bin/chromium).

import { spawn } from 'node:child_process'
import { createWriteStream, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import zlib from 'node:zlib'
import { randomBytes } from 'node:crypto'
import { SignJWT } from 'jose'
import { chromium } from 'playwright-core'

const here = path.dirname(fileURLToPath(import.meta.url))
const bin = path.resolve(here, process.env.E2E_BIN || '../target/debug')
const artifacts = path.join(here, 'artifacts')
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const ACCESS_TTL = 6 // seconds: tokens minted by the proxy and by the middleware
const FIRST_TTL = 10 // seconds: the session put in the browser (room for a slow first page load)
const REFRESH_TTL = 3600
const MAX_AGE = 43200
const NAMES = ['accessTokenEtls', 'refreshTokenEtls', 'accessToken', 'refreshToken', 'etlsUser']
const SECRETS = {
  ETLS_ACCESS: 'e2e-access-secret-not-for-production-000001',
  ETLS_REFRESH: 'e2e-refresh-secret-not-for-production-00001',
}
const OVERALL_MS = 240_000

let step = 'start-up'
class StepFailure extends Error {}
const fail = (msg) => {
  throw new StepFailure(msg)
}
const check = (ok, msg) => ok || fail(msg)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const log = (...a) => console.log('e2e:', ...a)

// ---------------------------------------------------------------- processes

const children = []
function start(name, cmd, args, env, cwd = here) {
  const out = createWriteStream(path.join(artifacts, 'logs', `${name}.log`))
  const child = spawn(cmd, args, { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  child.text = ''
  child.name = name
  for (const s of [child.stdout, child.stderr]) {
    s.on('data', (d) => {
      out.write(d)
      if (child.text.length < 1_000_000) child.text += d
    })
  }
  child.on('exit', (code, sig) => {
    child.exited = { code, sig }
  })
  children.push(child)
  return child
}
async function stop(child) {
  if (!child || child.exited) return
  try {
    process.kill(-child.pid, 'SIGKILL') // the process group this script created for it
  } catch {}
  for (let i = 0; i < 50 && !child.exited; i++) await sleep(100)
}
function stopAllNow() {
  for (const c of children) {
    if (!c.exited) {
      try {
        process.kill(-c.pid, 'SIGKILL')
      } catch {}
    }
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

async function waitHttp(url, child, ms = 30_000) {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (child.exited) fail(`${child.name} exited (${JSON.stringify(child.exited)}): see artifacts/logs/${child.name}.log`)
    try {
      await fetch(url, { signal: AbortSignal.timeout(1000), redirect: 'manual' })
      return
    } catch {}
    await sleep(150)
  }
  fail(`${child.name} did not answer on ${url} within ${ms} ms`)
}

async function authCalls(authPort) {
  const r = await fetch(`http://127.0.0.1:${authPort}/calls`, { signal: AbortSignal.timeout(3000) })
  return (await r.json()).calls
}
const refusals = (demo) => (demo.text.match(/refused a reused or unknown refresh token/g) || []).length

// ---------------------------------------------------------------- tokens and cookies

const key = (name) => new TextEncoder().encode(SECRETS[name])
const hex = () => randomBytes(8).toString('hex')
const expOf = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString()).exp

// A session as the app's own login leaves it: the five cookies, access token valid for `ttl` s.
async function mintSession(ttl) {
  const now = Math.floor(Date.now() / 1000)
  const sign = (claims, secret, exp) =>
    new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setExpirationTime(exp).sign(key(secret))
  return {
    accessTokenEtls: await sign({ username: 'e2e' }, 'ETLS_ACCESS', now + ttl),
    refreshTokenEtls: await sign({ username: 'e2e' }, 'ETLS_REFRESH', now + REFRESH_TTL),
    accessToken: `demo-at-${hex()}`,
    refreshToken: `demo-rt-${hex()}`, // the demo auth API accepts each demo-rt- value once
    etlsUser: await sign({ id: 1, username: 'e2e' }, 'ETLS_ACCESS', now + ttl),
  }
}

async function putSession(context, session) {
  const expires = Math.floor(Date.now() / 1000) + MAX_AGE
  await context.addCookies(
    NAMES.map((name) => ({
      name,
      value: session[name],
      domain: '127.0.0.1',
      path: '/',
      httpOnly: true,
      sameSite: 'Lax',
      expires,
    })),
  )
}

async function jar(context) {
  const all = await context.cookies()
  return Object.fromEntries(all.filter((c) => NAMES.includes(c.name)).map((c) => [c.name, c]))
}

async function waitExpired(jwt, what) {
  const ms = (expOf(jwt) + 1) * 1000 - Date.now() + 200
  check(ms < 30_000, `${what}: the access token expires ${ms} ms from now, more than the 30 s wait allowed`)
  log(`  waiting ${Math.max(0, ms)} ms for the access token to expire`)
  if (ms > 0) await sleep(ms)
}

// ---------------------------------------------------------------- the browser

// Every response the page sees, with what it was.
function recorder(page) {
  const rec = { all: [] }
  page.on('response', (r) => {
    const u = new URL(r.url())
    rec.all.push({ path: u.pathname, status: r.status(), type: r.request().resourceType(), method: r.request().method(), response: r })
  })
  rec.reset = () => (rec.all = [])
  rec.summary = () => {
    const dynamic = rec.all.filter((x) => !x.path.startsWith('/_next/static/'))
    // A response the browser took from its cache was never sent: Playwright's requestStart is -1.
    const network = rec.all.filter((x) => x.path !== '/favicon.ico' && x.response.request().timing().requestStart !== -1)
    return {
      total: rec.all.length,
      network: network.length,
      networkList: network.map((x) => `${x.method} ${x.path} ${x.status}`),
      documents: rec.all.filter((x) => x.type === 'document').length,
      nonStatic: dynamic.length,
      nonStaticList: dynamic.map((x) => `${x.method} ${x.path} ${x.status}`),
      unauthorized: rec.all.filter((x) => x.status === 401).length,
      refreshCalls: rec.all.filter((x) => x.path === '/api/auth/refreshtoken').length,
    }
  }
  return rec
}

async function newContext(browser) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } })
  context.setDefaultTimeout(15_000)
  context.setDefaultNavigationTimeout(15_000)
  const page = await context.newPage()
  return { context, page, rec: recorder(page) }
}

// Time from sending the request to the answer's headers, from the browser's own timing.
const ttfb = (response) => {
  const t = response.request().timing()
  return Math.round(t.responseStart - t.requestStart)
}
// Access log lines of the proxy (the favicon, which browsers fetch when they please, left out).
const accessLines = (proxy) => (proxy.text.match(/^(GET|POST|HEAD|PUT|DELETE|PATCH|OPTIONS) "(?!\/favicon\.ico")/gm) || []).length

const setCookieLines = async (response) =>
  (await response.headersArray()).filter((h) => h.name.toLowerCase() === 'set-cookie').map((h) => h.value)

async function rendered(page) {
  return {
    accessTokenEtls: (await page.locator('#accessTokenEtls').textContent()).trim(),
    accessToken: (await page.locator('#accessToken').textContent()).trim(),
    header: (await page.locator('#headerAccessTokenEtls').textContent()).trim(),
  }
}

// React has hydrated a node once it carries its props.
async function hydrated(page, selector) {
  await page.waitForFunction(
    (sel) => {
      const el = document.querySelector(sel)
      return !!el && Object.keys(el).some((k) => k.startsWith('__reactProps'))
    },
    selector,
    { timeout: 15_000 },
  )
}

// Fires the 20 fetch calls from the client page and waits for their statuses.
async function fire20(page, rec) {
  rec.reset()
  check((await page.locator('#statuses').textContent()) === '', 'the client page already shows statuses')
  await page.click('#fire')
  await page.waitForFunction(() => document.querySelector('#statuses').textContent.trim() !== '', null, {
    timeout: 20_000,
  })
  const statuses = (await page.locator('#statuses').textContent()).trim().split(/\s+/)
  const api = rec.all.filter((x) => x.path === '/api/whoami')
  const tokens = new Set()
  let withCookies = 0
  for (const x of api) {
    const lines = await setCookieLines(x.response)
    const at = lines.find((l) => l.startsWith('accessTokenEtls='))
    if (at) {
      withCookies++
      tokens.add(at.split(';')[0])
    }
  }
  return { statuses, apiResponses: api.length, withCookies, distinctTokens: tokens.size, summary: rec.summary() }
}

const countBy = (xs) => {
  const m = {}
  for (const x of xs) m[x] = (m[x] || 0) + 1
  return Object.entries(m)
    .map(([k, v]) => `${v} × ${k}`)
    .join(', ')
}

// ---------------------------------------------------------------- screenshots

// Decodes an 8-bit, non-interlaced PNG (what Chromium writes) and counts the pixels that differ
// from the most common colour; falls back to the file size for anything else.
function inkPixels(file) {
  const buf = readFileSync(file)
  let pos = 8
  let w, h, depth, colour, interlace
  const idat = []
  while (pos < buf.length) {
    const len = buf.readUInt32BE(pos)
    const type = buf.toString('latin1', pos + 4, pos + 8)
    const data = buf.subarray(pos + 8, pos + 8 + len)
    if (type === 'IHDR') {
      w = data.readUInt32BE(0)
      h = data.readUInt32BE(4)
      depth = data[8]
      colour = data[9]
      interlace = data[12]
    } else if (type === 'IDAT') idat.push(data)
    pos += 12 + len
  }
  const bpp = { 0: 1, 2: 3, 4: 2, 6: 4 }[colour]
  if (depth !== 8 || !bpp || interlace) return buf.length > 20_000 ? Infinity : 0
  const raw = zlib.inflateSync(Buffer.concat(idat))
  const stride = w * bpp
  const px = Buffer.alloc(stride * h)
  for (let y = 0; y < h; y++) {
    const f = raw[y * (stride + 1)]
    const src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1))
    const row = px.subarray(y * stride, (y + 1) * stride)
    const prev = y ? px.subarray((y - 1) * stride, y * stride) : Buffer.alloc(stride)
    for (let i = 0; i < stride; i++) {
      const a = i >= bpp ? row[i - bpp] : 0
      const b = prev[i]
      const c = i >= bpp ? prev[i - bpp] : 0
      let p
      if (f === 0) p = 0
      else if (f === 1) p = a
      else if (f === 2) p = b
      else if (f === 3) p = (a + b) >> 1
      else {
        const q = a + b - c
        const pa = Math.abs(q - a)
        const pb = Math.abs(q - b)
        const pc = Math.abs(q - c)
        p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c
      }
      row[i] = (src[i] + p) & 255
    }
  }
  const counts = new Map()
  for (let i = 0; i < px.length; i += bpp) {
    const k = px.subarray(i, i + Math.min(bpp, 3)).toString('hex')
    counts.set(k, (counts.get(k) || 0) + 1)
  }
  return w * h - Math.max(...counts.values())
}

async function shot(page, name) {
  const file = path.join(artifacts, `${name}.png`)
  await page.screenshot({ path: file, timeout: 15_000 })
  const ink = inkPixels(file)
  check(ink >= 300, `screenshot ${name}.png looks blank (${ink} pixels differ from the background)`)
  return ink
}

// ---------------------------------------------------------------- the two set-ups

function nextEnv(extra) {
  const env = { ...process.env, NEXT_TELEMETRY_DISABLED: '1', NODE_ENV: 'production' }
  for (const k of ['E2E_MIDDLEWARE', 'ETLS_ACCESS', 'ETLS_REFRESH', 'ETLS_ACCESS_EXPIRE_TIME', 'ETLS_REFRESH_EXPIRE_TIME', 'REMOTE_API']) delete env[k]
  return { ...env, ...extra }
}
const nextArgs = (port) => [path.join(here, 'node_modules/next/dist/bin/next'), 'start', 'app', '-H', '127.0.0.1', '-p', String(port)]

async function proxySetup(browser, demo, authPort) {
  const appPort = await freePort()
  const proxyPort = await freePort()
  step = 'proxy set-up: starting next and etls-proxy'
  // The same build through a custom server (app/server.mjs) that adds a WebSocket endpoint.
  const next = start('next-behind-proxy', process.execPath, [path.join(here, 'app/server.mjs'), '127.0.0.1', String(appPort)], nextEnv({}))
  const yaml = `# generated by e2e/run.mjs
listen: ["127.0.0.1:${proxyPort}"]
pingora: {threads: 1, grace_period_seconds: 1}
upstream: {address: "127.0.0.1:${appPort}"}
auth_api: {refresh_url: "http://127.0.0.1:${authPort}/refreshtoken"}
tokens: {access_ttl_secs: ${ACCESS_TTL}, refresh_ttl_secs: ${REFRESH_TTL}}
routes: {public: ["/_next/static/", "/_next/image", "/favicon.ico"]}
`
  const conf = path.join(artifacts, 'etls-proxy.yaml')
  writeFileSync(conf, yaml)
  const penv = { ...process.env, ...SECRETS, RUST_LOG: 'info' }
  delete penv.ETLS_ACCESS_EXPIRE_TIME
  delete penv.ETLS_REFRESH_EXPIRE_TIME
  const proxy = start('etls-proxy', path.join(bin, 'etls-proxy'), ['-c', conf], penv)
  await waitHttp(`http://127.0.0.1:${appPort}/client`, next)
  await waitHttp(`http://127.0.0.1:${proxyPort}/_next/static/ready`, proxy)
  const base = `http://127.0.0.1:${proxyPort}`
  const out = { base }
  const { context, page, rec } = await newContext(browser)

  step = 'proxy 1 (a valid session renders)'
  const s1 = await mintSession(FIRST_TTL)
  await putSession(context, s1)
  const r1 = await page.goto(base + '/')
  check(r1.status() === 200, `the page answered ${r1.status()}, not 200`)
  const seen1 = await rendered(page)
  check(seen1.accessTokenEtls === s1.accessTokenEtls, 'the server component did not see the accessTokenEtls cookie put in the browser')
  check(seen1.accessToken === s1.accessToken, 'the server component did not see the accessToken cookie')
  check((await setCookieLines(r1)).length === 0, 'a valid session got Set-Cookie headers')
  await shot(page, 'proxy-1-valid')
  log('  1. valid session: 200, the server component saw the cookies put in the browser')

  step = 'proxy 2 (expired access token, reload)'
  await waitExpired(s1.accessTokenEtls, step)
  rec.reset()
  const logged0 = accessLines(proxy)
  const r2 = await page.reload()
  await page.waitForLoadState('load')
  const ms2 = ttfb(r2)
  const sum2 = rec.summary()
  await sleep(200) // the access log line is written once the answer is complete
  const reached = accessLines(proxy) - logged0
  const seen2 = await rendered(page)
  const j2 = await jar(context)
  const lines2 = await setCookieLines(r2)
  check(r2.status() === 200, `the reload answered ${r2.status()}, not 200`)
  check(sum2.unauthorized === 0, `the browser saw ${sum2.unauthorized} 401 answer(s): ${sum2.nonStaticList.join('; ')}`)
  check(sum2.documents === 1, `the browser loaded ${sum2.documents} documents, not 1 (a retry?)`)
  check(sum2.refreshCalls === 0, 'the browser called the refresh endpoint itself')
  check(sum2.nonStaticList.filter((x) => !x.includes('/favicon.ico')).length === 1, `round trips other than the page itself: ${sum2.nonStaticList.join('; ')}`)
  check(reached === sum2.network, `the proxy logged ${reached} requests for the reload, the browser counts ${sum2.network} from the network`)
  check(lines2.length === 5, `the page carried ${lines2.length} Set-Cookie headers, not 5`)
  for (const name of NAMES) {
    const c = j2[name]
    check(c, `the browser's jar has no ${name} after the refresh`)
    check(c.value !== s1[name], `${name} in the browser's jar was not renewed`)
    check(c.httpOnly === true, `${name} is not HttpOnly`)
    check(c.path === '/', `${name} has Path ${c.path}`)
    check(c.sameSite === 'Lax', `${name} has SameSite ${c.sameSite}`)
    const want = Date.now() / 1000 + MAX_AGE
    check(Math.abs(c.expires - want) < 120, `${name} expires at ${c.expires}, not about now + ${MAX_AGE} s (${Math.round(want)})`)
  }
  check(seen2.accessTokenEtls === j2.accessTokenEtls.value, 'the server component did not see the new accessTokenEtls in the same request')
  check(seen2.accessToken === j2.accessToken.value, 'the server component did not see the new accessToken in the same request')
  check(seen2.header === j2.accessTokenEtls.value, 'the raw Cookie header the app got did not hold the new accessTokenEtls')
  check(/GET "\/" 200 refreshed/.test(proxy.text), 'the proxy log has no `GET "/" 200 refreshed` line')
  await shot(page, 'proxy-2-refreshed')
  out.load = { status: r2.status(), ms: ms2, ...sum2, setCookies: lines2.length, fresh: true, headerFresh: true, jarRenewed: true }
  log(`  2. expired token, reload: 200 (first byte after ${ms2} ms), ${sum2.network} request(s) over the network (${sum2.networkList.join('; ')}), ${sum2.total - sum2.network} from the browser cache, no 401,`)
  log('     the server component rendered the new tokens (cookies() and the raw Cookie header); five new cookies in the jar, HttpOnly, Path=/, SameSite=Lax, Max-Age 43200')

  step = 'proxy 3 (20 parallel fetches after expiry)'
  await page.goto(base + '/client')
  await hydrated(page, '#fire')
  const before3 = await jar(context)
  await waitExpired(before3.accessTokenEtls.value, step)
  const calls0 = await authCalls(demo.authPort)
  const refused0 = refusals(demo)
  const f = await fire20(page, rec)
  const calls = (await authCalls(demo.authPort)) - calls0
  const refused = refusals(demo) - refused0
  const j3 = await jar(context)
  check(f.statuses.length === 20, `the page shows ${f.statuses.length} statuses, not 20`)
  check(f.statuses.every((s) => s === '200'), `statuses: ${countBy(f.statuses)}`)
  check(f.apiResponses === 20, `the browser saw ${f.apiResponses} answers from the API route, not 20 (retries?)`)
  check(calls === 1 && refused === 0, `the auth API was called ${calls} time(s) (and refused ${refused}), not exactly once`)
  check(f.distinctTokens === 1, `the answers carried ${f.distinctTokens} different new access tokens`)
  check(j3.accessTokenEtls && j3.accessTokenEtls.value !== before3.accessTokenEtls.value, 'the jar was not renewed by the parallel fetches')
  await shot(page, 'proxy-3-parallel')
  out.herd = { statuses: countBy(f.statuses), calls, refused, withCookies: f.withCookies, distinct: f.distinctTokens, session: 'kept' }
  log(`  3. 20 parallel fetches after expiry: ${countBy(f.statuses)}; auth API calls: ${calls}; ${f.withCookies} answers carried the (identical) new cookies`)

  step = 'proxy 4 (logout)'
  await page.click('#logout')
  await page.waitForFunction(() => document.querySelector('#logoutStatus').textContent !== '', null, { timeout: 15_000 })
  const ls = await page.locator('#logoutStatus').textContent()
  check(ls === '200', `POST /api/auth/logout answered ${ls}`)
  const j4 = await jar(context)
  check(Object.keys(j4).length === 0, `cookies left after logout: ${Object.keys(j4).join(', ')}`)
  const r4 = await page.goto(base + '/')
  const body4 = await r4.text()
  check(r4.status() === 401, `the page after logout answered ${r4.status()}, not 401`)
  check(body4.includes('"error":"Unauthorized"'), `the 401 body is ${body4.slice(0, 100)}`)
  await shot(page, 'proxy-4-logged-out')
  log('  4. logout: 200, the five cookies gone from the browser, the next page load a 401 {"error":"Unauthorized"}')

  step = 'proxy 5 (a WebSocket opened with an expired session)'
  const s5 = await mintSession(-30)
  await putSession(context, s5)
  // A page on the origin that is public (no check, no refresh): the WebSocket is the request
  // that finds the session expired.
  await page.goto(base + '/_next/static/ws-origin')
  const calls5 = await authCalls(demo.authPort)
  const logged5 = proxy.text.length
  let got
  try {
    got = await page.evaluate(async (url) => {
      const ws = new WebSocket(url)
      const messages = []
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no answer within 10 s')), 10_000)
        ws.onmessage = (e) => {
          messages.push(String(e.data))
          if (messages.length === 1) ws.send('echo through etls-proxy')
          else {
            clearTimeout(timer)
            resolve()
          }
        }
        ws.onerror = () => reject(new Error('the WebSocket failed (handshake refused?)'))
        ws.onclose = (e) => reject(new Error(`the WebSocket closed (${e.code}) after ${messages.length} message(s)`))
      })
      ws.onclose = null
      ws.close()
      return messages
    }, base.replace(/^http/, 'ws') + '/ws')
  } catch (e) {
    fail(`the browser's WebSocket: ${e.message}`)
  }
  await sleep(200) // the access log line is written once the tunnel is set up
  const j5 = await jar(context)
  for (const name of NAMES) {
    const c = j5[name]
    check(c, `the browser's jar has no ${name} after the WebSocket handshake`)
    check(c.value !== s5[name], `${name} in the browser's jar was not renewed by the WebSocket handshake`)
    check(c.httpOnly === true && c.path === '/' && c.sameSite === 'Lax', `${name} from the 101 lost an attribute`)
  }
  const seen5 = JSON.parse(got[0]).cookie
  check(seen5.includes(`accessTokenEtls=${j5.accessTokenEtls.value}`), 'the app\'s WebSocket handshake did not carry the new accessTokenEtls')
  check(seen5.includes(`refreshToken=${j5.refreshToken.value}`) && !seen5.includes(s5.refreshToken), 'the app\'s WebSocket handshake did not carry the rotated refreshToken')
  check(got[1] === 'echo through etls-proxy', `the echo came back as ${JSON.stringify(got[1])}`)
  const calls5d = (await authCalls(demo.authPort)) - calls5
  check(calls5d === 1, `the auth API was called ${calls5d} time(s) for the WebSocket, not once`)
  check(/GET "\/ws" 101 refreshed/.test(proxy.text.slice(logged5)), 'the proxy log has no `GET "/ws" 101 refreshed` line')
  out.websocket = { calls: calls5d, renewed: NAMES.length }
  log('  5. WebSocket with an expired session: 101, the five new cookies in the jar (HttpOnly, Path=/, SameSite=Lax), the app saw the new tokens, echo through the tunnel, one auth API call')

  await chunkedUserStep(browser, base)
  await context.close()
  await stop(proxy)
  await stop(next)
  return out
}

// A user record too large for one cookie (the demo auth API answers one for refresh tokens
// starting demo-rt-big-): Chromium's jar then holds etlsUser.0..k, each within 4096 bytes, the
// app's server code sees one etlsUser, reassembled, on that request and the next, and logout
// clears every chunk.
async function chunkedUserStep(browser, base) {
  step = 'proxy 6 (a user record over one cookie, chunked)'
  const { context, page } = await newContext(browser)
  const s = await mintSession(-30)
  s.refreshToken = `demo-rt-big-${hex()}`
  await putSession(context, s)
  const chunksIn = async () => {
    const all = (await context.cookies()).filter((c) => c.name.startsWith('etlsUser'))
    return all.sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }))
  }
  const r = await page.goto(base + '/api/whoami')
  check(r.status() === 200, `the refresh with a large user record answered ${r.status()}: ${(await r.text()).slice(0, 200)}`)
  const seen = await r.json()
  const lines = await setCookieLines(r)
  for (const l of lines) check(l.length <= 4096, `a Set-Cookie line of ${l.length} bytes`)
  const held = await chunksIn()
  const names = held.map((c) => c.name)
  check(held.length >= 2 && held.every((c, i) => c.name === `etlsUser.${i}`), `the jar holds ${names.join(', ')}, not etlsUser.0..k`)
  for (const c of held) check(c.name.length + c.value.length <= 4096 && c.httpOnly, `${c.name} is ${c.value.length} bytes or not HttpOnly`)
  const joined = held.map((c) => c.value).join('')
  const perms = JSON.parse(Buffer.from(joined.split('.')[1], 'base64url').toString()).perms
  check(perms && perms.length === 400, 'the joined etlsUser does not carry the 400 permissions')
  check(seen.etlsUser === joined && seen.etlsUserChunks === 0, `the app saw etlsUser of ${seen.etlsUser.length} bytes and ${seen.etlsUserChunks} chunk cookies on the refreshed request`)
  const again = await (await page.goto(base + '/api/whoami')).json()
  check(again.etlsUser === joined && again.etlsUserChunks === 0, `from the jar's chunks, the app saw etlsUser of ${again.etlsUser.length} bytes and ${again.etlsUserChunks} chunk cookies`)
  const status = await page.evaluate(() => fetch('/api/auth/logout', { method: 'POST' }).then((x) => x.status))
  check(status === 200, `logout answered ${status}`)
  const left = await chunksIn()
  check(left.length === 0, `cookies left after logout: ${left.map((c) => c.name).join(', ')}`)
  log(`  6. a user record over one cookie: ${held.length} chunks (${held.map((c) => c.name.length + c.value.length + 1).join(' + ')} bytes) in the jar, the app saw one etlsUser of ${joined.length} bytes, logout cleared them all`)
  await context.close()
}

// The same app and build, no proxy: its middleware checks and refreshes (measured, not judged).
async function middlewareSetup(browser, demo, authPort, mode) {
  const appPort = await freePort()
  step = `middleware (${mode}) set-up: starting next`
  const next = start(
    `next-middleware-${mode}`,
    process.execPath,
    nextArgs(appPort),
    nextEnv({
      ...SECRETS,
      E2E_MIDDLEWARE: mode,
      REMOTE_API: `http://127.0.0.1:${authPort}`,
      ETLS_ACCESS_EXPIRE_TIME: String(ACCESS_TTL),
      ETLS_REFRESH_EXPIRE_TIME: String(REFRESH_TTL),
    }),
  )
  await waitHttp(`http://127.0.0.1:${appPort}/client`, next)
  const base = `http://127.0.0.1:${appPort}`
  const { context, page, rec } = await newContext(browser)
  const out = {}

  step = `middleware (${mode}) 1 (a valid session renders)`
  const s1 = await mintSession(FIRST_TTL)
  await putSession(context, s1)
  const r1 = await page.goto(base + '/')
  check(r1.status() === 200, `the page answered ${r1.status()}, not 200`)
  check((await rendered(page)).accessTokenEtls === s1.accessTokenEtls, 'the server component did not see the cookies')

  step = `middleware (${mode}) 2 (expired access token, reload)`
  await waitExpired(s1.accessTokenEtls, step)
  const calls0 = await authCalls(authPort)
  rec.reset()
  const r2 = await page.reload()
  await page.waitForLoadState('load')
  const ms2 = ttfb(r2)
  const sum2 = rec.summary()
  const j2 = await jar(context)
  let seen2 = null
  if (r2.status() === 200) seen2 = await rendered(page)
  const renewed = NAMES.every((n) => j2[n] && j2[n].value !== s1[n])
  out.load = {
    status: r2.status(),
    ms: ms2,
    ...sum2,
    setCookies: (await setCookieLines(r2)).length,
    calls: (await authCalls(authPort)) - calls0,
    jarRenewed: renewed,
    // the render saw the new token / still the expired one
    fresh: !!seen2 && renewed && seen2.accessTokenEtls === j2.accessTokenEtls.value,
    stale: !!seen2 && seen2.accessTokenEtls === s1.accessTokenEtls,
    headerFresh: !!seen2 && renewed && seen2.header === j2.accessTokenEtls.value,
    headerStale: !!seen2 && seen2.header === s1.accessTokenEtls,
  }
  await shot(page, `middleware-${mode}-2-expired-load`)
  log(
    `  expired token, reload: ${r2.status()} (first byte after ${ms2} ms), ${sum2.network} request(s) over the network (${sum2.networkList.join('; ')}), ${sum2.total - sum2.network} from the cache,` +
      ` cookies() saw the ${out.load.fresh ? 'NEW' : out.load.stale ? 'EXPIRED (old)' : 'no/other'} token, the raw Cookie header the ${out.load.headerFresh ? 'NEW' : out.load.headerStale ? 'EXPIRED (old)' : 'no/other'} one, jar renewed: ${renewed}`,
  )

  step = `middleware (${mode}) 3 (20 parallel fetches after expiry)`
  if (!renewed) {
    out.herd = null
  } else {
    await page.goto(base + '/client')
    await hydrated(page, '#fire')
    const before3 = await jar(context)
    await waitExpired(before3.accessTokenEtls.value, step)
    const c0 = await authCalls(authPort)
    const refused0 = refusals(demo)
    const f = await fire20(page, rec)
    await sleep(300) // let the refusals reach the demo's log
    const j3 = await jar(context)
    out.herd = {
      statuses: countBy(f.statuses),
      calls: (await authCalls(authPort)) - c0,
      refused: refusals(demo) - refused0,
      withCookies: f.withCookies,
      distinct: f.distinctTokens,
      session: Object.keys(j3).length === 5 ? 'kept' : `lost (${Object.keys(j3).length} of the 5 cookies left)`,
    }
    await shot(page, `middleware-${mode}-3-parallel`)
    log(
      `  20 parallel fetches after expiry: ${out.herd.statuses}; auth API: ${out.herd.calls} accepted, ${out.herd.refused} refused; session ${out.herd.session}`,
    )
  }
  await context.close()
  await stop(next)
  return out
}

// ---------------------------------------------------------------- the report

function table(p, mws) {
  const cols = [['etls-proxy', p], ...mws.map(([mode, m]) => [mode === 'response' ? 'middleware.js, cookies on the response (the seeds\' way)' : 'middleware.js, also rewriting the request Cookie header', m])]
  const row = (label, f) => `| ${label} | ${cols.map(([, x]) => f(x)).join(' | ')} |`
  const yes = (b) => (b ? 'yes' : '**no**')
  const lines = [
    `| expired access token, one page load | ${cols.map(([n]) => n).join(' | ')} |`,
    `|---|${cols.map(() => '---').join('|')}|`,
    row('answer to the page request', (x) => String(x.load.status)),
    row('HTTP requests sent over the network for the page load', (x) => `${x.load.network} (${x.load.networkList.join(', ')}); ${x.load.total - x.load.network} scripts from the browser cache`),
    row('time to the page\'s first byte (one sample)', (x) => `${x.load.ms} ms`),
    row('401s seen by the browser, client-side retries', (x) => `${x.load.unauthorized}, ${x.load.refreshCalls}`),
    row('Set-Cookie headers on the page', (x) => String(x.load.setCookies)),
    row('server component (`cookies()`) saw the fresh token in that same render', (x) => yes(x.load.fresh) + (x.load.stale ? ' (it rendered the expired one)' : '')),
    row('the raw Cookie header of that request (`headers()`) held the fresh token', (x) => yes(x.load.headerFresh) + (x.load.headerStale ? ' (the expired one)' : '')),
    row('20 parallel fetch calls after expiry: answers', (x) => (x.herd ? x.herd.statuses : 'n/a')),
    row('… auth API calls (accepted / refused as reused)', (x) => (x.herd ? `${x.herd.calls} / ${x.herd.refused}` : 'n/a')),
    row('… session afterwards', (x) => (x.herd ? x.herd.session : 'n/a')),
  ]
  return lines.join('\n')
}

// ---------------------------------------------------------------- main

async function main() {
  rmSync(artifacts, { recursive: true, force: true })
  mkdirSync(path.join(artifacts, 'logs'), { recursive: true })
  const next = JSON.parse(readFileSync(path.join(here, 'node_modules/next/package.json'))).version
  log(`Next.js ${next}, Chromium at ${CHROMIUM}, binaries from ${bin}`)

  step = 'start-up: the demo auth API'
  const authPort = await freePort()
  const demo = start('etls-demo', path.join(bin, 'etls-demo'), ['serve', '--app', `127.0.0.1:${await freePort()}`, '--auth', `127.0.0.1:${authPort}`], process.env)
  demo.authPort = authPort
  await waitHttp(`http://127.0.0.1:${authPort}/calls`, demo)

  step = 'start-up: Chromium'
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  })
  log(`Chromium ${browser.version()}`)

  log('behind etls-proxy:')
  const p = await proxySetup(browser, demo, authPort)
  const mws = []
  for (const mode of ['response', 'request']) {
    log(`without the proxy, middleware.js (E2E_MIDDLEWARE=${mode}):`)
    mws.push([mode, await middlewareSetup(browser, demo, authPort, mode)])
  }
  await browser.close()

  const report = `# make e2e: comparison (Next.js ${next}, ${browser.version()})\n\n${table(p, mws)}\n`
  writeFileSync(path.join(artifacts, 'comparison.md'), report)
  writeFileSync(path.join(artifacts, 'results.json'), JSON.stringify({ next, proxy: p, middleware: Object.fromEntries(mws) }, null, 2))
  console.log('\n' + report)
}

const watchdog = setTimeout(() => {
  console.error(`e2e: FAILED at step "${step}": the whole run took over ${OVERALL_MS / 1000} s`)
  stopAllNow()
  process.exit(1)
}, OVERALL_MS)

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    console.error(`e2e: FAILED at step "${step}": interrupted by ${sig}`)
    stopAllNow()
    process.exit(1)
  })
}

try {
  await main()
  clearTimeout(watchdog)
  log('all steps passed; screenshots and logs in e2e/artifacts/')
  await Promise.all(children.map(stop))
  process.exit(0)
} catch (e) {
  clearTimeout(watchdog)
  const what = e instanceof StepFailure ? e.message : e.stack || String(e)
  console.error(`e2e: FAILED at step "${step}": ${what}`)
  console.error('e2e: logs of every process are in e2e/artifacts/logs/')
  stopAllNow()
  process.exit(1)
}
