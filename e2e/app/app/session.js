// What the server saw: the access cookies through cookies() from next/headers, and the
// accessTokenEtls in the raw Cookie header (what code that forwards `Cookie` to an API sends on).
import { cookies, headers } from 'next/headers'

function expOf(token) {
  try {
    const payload = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString())
    return payload.exp ?? null
  } catch {
    return null
  }
}

export async function seenCookies() {
  const jar = await cookies()
  const accessTokenEtls = jar.get('accessTokenEtls')?.value ?? ''
  const accessToken = jar.get('accessToken')?.value ?? ''
  const raw = (await headers()).get('cookie') ?? ''
  const inHeader = raw
    .split(/;\s*/)
    .find((c) => c.startsWith('accessTokenEtls='))
    ?.slice('accessTokenEtls='.length)
  return {
    accessTokenEtls,
    accessToken,
    // The user token as one cookie, and how many chunk cookies (etlsUser.N) the app saw.
    etlsUser: jar.get('etlsUser')?.value ?? '',
    etlsUserChunks: jar.getAll().filter((c) => /^etlsUser\.\d+$/.test(c.name)).length,
    headerAccessTokenEtls: inHeader ?? '',
    exp: expOf(accessTokenEtls),
    renderedAt: Date.now(),
  }
}
