// Server-rendered on every request: shows which tokens this very request carried.
import { seenCookies } from './session'

export const dynamic = 'force-dynamic'

export default async function Home() {
  const seen = await seenCookies()
  return (
    <main>
      <h1>Server component</h1>
      <p>
        accessTokenEtls (exp <span id="exp">{String(seen.exp)}</span>):
      </p>
      <pre id="accessTokenEtls" style={{ whiteSpace: 'pre-wrap', wordBreak: 'break-all' }}>
        {seen.accessTokenEtls || '(none)'}
      </pre>
      <p>
        accessToken: <code id="accessToken">{seen.accessToken || '(none)'}</code>
      </p>
      <p>accessTokenEtls in the raw Cookie header (headers()):</p>
      <pre id="headerAccessTokenEtls" style={{ whiteSpace: 'pre-wrap', wordBreak: 'break-all' }}>
        {seen.headerAccessTokenEtls || '(none)'}
      </pre>
      <p>
        rendered at <span id="renderedAt">{seen.renderedAt}</span>
      </p>
    </main>
  )
}
