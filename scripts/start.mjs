/**
 * `npm start`: runs the fast lane that `npm run build` bundled (server.ts → `<distDir>/keyward-server.mjs`),
 * passing on its arguments (`-p`, `-H`, `--keepAliveTimeout`; read in lib/node/args.ts). distDir follows
 * next.config.ts. `--help` answers here, so it works before a build.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const USAGE = `Usage: npm start -- [options]

Starts Keyward in production: /api/proxy/* through its core directly (the fast lane), everything else through
Next.js. Build first with \`npm run build\`. \`npm run start:next\` runs \`next start\` (route handlers only).

Options (as \`next start\` takes them):
  -p, --port <port>            port to listen on (default: $PORT, else 3000)
  -H, --hostname <hostname>    address to listen on (default: $HOSTNAME, else every interface)
  --keepAliveTimeout <ms>      how long an idle keep-alive connection is kept open (default: 5000)
  -h, --help                   this text`;

const args = process.argv.slice(2);
if (args.includes('--help') || args.includes('-h')) {
  console.log(USAGE);
  process.exit(0);
}

const entry = resolve(process.env.KEYWARD_DIST_DIR || '.next', 'keyward-server.mjs');
if (!existsSync(entry)) {
  console.error(`Keyward cannot start: ${entry} is missing. Run \`npm run build\` first.`);
  process.exit(1);
}
await import(pathToFileURL(entry).href);
