export const metadata = { title: 'etls-proxy e2e' }

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body style={{ fontFamily: 'sans-serif', margin: 24, fontSize: 18 }}>{children}</body>
    </html>
  )
}
