import { Demo } from './demo';

export default function Home() {
  return (
    <main>
      <h1>Keyward</h1>
      <p>
        This page calls the demo upstream API through <code>/api/proxy/demo/…</code>. Keyward checks your session,
        attaches the upstream&apos;s key on the server and streams the answer back. Below is exactly what your browser
        received.
      </p>
      <Demo />
    </main>
  );
}
