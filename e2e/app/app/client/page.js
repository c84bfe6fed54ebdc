'use client'
// Fires 20 fetch calls at once at the API route and shows their statuses; logs out on demand.
import { useState } from 'react'

export default function Client() {
  const [statuses, setStatuses] = useState('')
  const [logout, setLogout] = useState('')

  async function fire() {
    setStatuses('')
    const answers = await Promise.all(
      Array.from({ length: 20 }, () =>
        fetch('/api/whoami', { cache: 'no-store' }).then(
          (r) => r.status,
          () => 'network error',
        ),
      ),
    )
    setStatuses(answers.join(' '))
  }

  async function logOut() {
    const r = await fetch('/api/auth/logout', { method: 'POST' })
    setLogout(String(r.status))
  }

  return (
    <main>
      <h1>Client page</h1>
      <button id="fire" onClick={fire}>Fire 20 fetch calls</button>{' '}
      <button id="logout" onClick={logOut}>Log out</button>
      <p>
        statuses: <code id="statuses">{statuses}</code>
      </p>
      <p>
        logout: <code id="logoutStatus">{logout}</code>
      </p>
    </main>
  )
}
