// The comparison set-up, without the proxy: the seeds' check and refresh as a Next.js middleware
// (Edge runtime, `jose`), as faithfully as a middleware can do it. Off unless E2E_MIDDLEWARE is
// set, so the same build also runs behind etls-proxy:
//   E2E_MIDDLEWARE=response  the new cookies are set on the response only (the seeds' way);
//   E2E_MIDDLEWARE=request   they are also written into the request's Cookie header
//                            (NextResponse.next({ request: { headers } })).
// Env as in the seeds: ETLS_ACCESS, ETLS_REFRESH, ETLS_ACCESS_EXPIRE_TIME,
// ETLS_REFRESH_EXPIRE_TIME, REMOTE_API (the auth API's base URL).
import { NextResponse } from 'next/server'
import { errors, jwtVerify, SignJWT } from 'jose'

export const config = { matcher: ['/((?!_next/static|_next/image|favicon.ico).*)'] }

const NAMES = ['accessTokenEtls', 'refreshTokenEtls', 'accessToken', 'refreshToken', 'etlsUser']
const key = (name) => new TextEncoder().encode(process.env[name])
const HS256 = { algorithms: ['HS256'] }

function logoutResponse() {
  const res = NextResponse.json({ error: 'Unauthorized' }, { status: 401 })
  for (const name of NAMES) res.cookies.set(name, '', { path: '/', maxAge: 0 })
  return res
}

export async function middleware(req) {
  const mode = process.env.E2E_MIDDLEWARE
  if (!mode) return NextResponse.next()
  try {
    const access = req.cookies.get('accessTokenEtls')?.value
    if (access) {
      try {
        await jwtVerify(access, key('ETLS_ACCESS'), HS256)
        return NextResponse.next()
      } catch (e) {
        if (!(e instanceof errors.JWTExpired)) return logoutResponse()
      }
    }
    const refreshTokenEtls = req.cookies.get('refreshTokenEtls')?.value
    const refreshToken = req.cookies.get('refreshToken')?.value
    if (!refreshTokenEtls || !refreshToken) return logoutResponse()
    const { payload } = await jwtVerify(refreshTokenEtls, key('ETLS_REFRESH'), HS256)

    const answer = await fetch(`${process.env.REMOTE_API}/refreshtoken`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Cookie: `refreshToken=${refreshToken}` },
      body: '{}',
      cache: 'no-store',
    })
    const type = answer.headers.get('content-type') || ''
    if (!answer.ok || !type.includes('application/json')) return logoutResponse()
    const data = await answer.json()

    const now = Math.floor(Date.now() / 1000)
    const sign = (claims, secret, ttl) =>
      new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setExpirationTime(now + ttl).sign(key(secret))
    const accessTtl = Number(process.env.ETLS_ACCESS_EXPIRE_TIME)
    const refreshTtl = Number(process.env.ETLS_REFRESH_EXPIRE_TIME)
    const fresh = {
      accessTokenEtls: await sign({ username: payload.username }, 'ETLS_ACCESS', accessTtl),
      refreshTokenEtls: await sign({ username: payload.username }, 'ETLS_REFRESH', refreshTtl),
      accessToken: data.accessToken,
      refreshToken: data.refreshToken,
      etlsUser: await sign(data.userData, 'ETLS_ACCESS', accessTtl),
    }

    let res
    if (mode === 'request') {
      for (const [name, value] of Object.entries(fresh)) req.cookies.set(name, value)
      res = NextResponse.next({ request: { headers: req.headers } })
    } else {
      res = NextResponse.next()
    }
    const attrs = { httpOnly: true, path: '/', maxAge: 43200, sameSite: 'lax' }
    for (const [name, value] of Object.entries(fresh)) res.cookies.set(name, value, attrs)
    return res
  } catch (e) {
    console.error('middleware: refresh failed:', e?.message ?? e)
    return logoutResponse()
  }
}
