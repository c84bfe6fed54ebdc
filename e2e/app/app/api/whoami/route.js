import { seenCookies } from '../../session'

export const dynamic = 'force-dynamic'

export async function GET() {
  return Response.json(await seenCookies())
}
