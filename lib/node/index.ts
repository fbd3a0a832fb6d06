/**
 * `keyward/node`: the fast lane's parts (DESIGN.md "Two entry points, one core"), as this repository's server.ts
 * assembles them: a Node `http` server that answers /api/proxy/* with the core and hands the rest to Next.js,
 * which runs in a child process (startNextProcess).
 */
export { readServeOptions, UsageError, type ServeOptions } from './args';
export { createClientErrorAnswer, createConnectRefusal, createFastLane, type FastLaneOptions } from './fast-lane';
export { NextExitedError, NextSocketFolderError, startNextProcess, type NextProcess, type NextProcessOptions } from './next-process';
export { createFastLaneRuntime, fastLaneProblems } from './runtime';
export { createUpgradeListener, type UpgradeOptions } from './websocket';
export { OpenSockets } from '@/lib/core/ws/sockets';
export { WsTickets } from '@/lib/core/ws/tickets';
export { checkStartup, checkStartupImport } from '@/lib/core/startup';
export { printUncaughtErrorsScrubbed, scrubConsole } from '@/lib/core/log/console';
export { drainThenCut, ServingCalls, SHUTDOWN_DRAIN_MS } from '@/lib/core/shutdown';
export { registerTracingFromEnv, shutdownTracing } from '@/lib/core/observe/trace';
