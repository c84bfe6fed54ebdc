import path from 'node:path'
import { fileURLToPath } from 'node:url'

// The lockfile lives one level up (e2e/); say so, so Turbopack does not guess.
const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)))

export default {
  turbopack: { root },
  poweredByHeader: false,
}
