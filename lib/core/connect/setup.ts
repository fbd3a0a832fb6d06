import 'server-only';
import { ConfigError, type ConfigSections } from '../config/load';
import { formatIssues } from '../config/schema';
import type { TokenRefresher } from '../credential/oauth';
import type { Env } from '../upstream/registry';
import { ProviderClient } from './client';
import { connectionsSchema, type ConnectionsConfig, type ConnectionsInput } from './config';
import { resolveConnections, type ConnectionProvider } from './providers';

/** What the runtime takes from the connection providers' configuration (lib/core/runtime.ts). */
export interface ConnectionSetup {
  readonly providers: ReadonlyMap<string, ConnectionProvider>;
  readonly clients: ReadonlyMap<string, ProviderClient>;
  /** The refresh_token grant of each provider, for the token store's single-flight refresh. */
  readonly refreshers: ReadonlyMap<string, TokenRefresher>;
}

/**
 * The providers from `createKeyward({ connections })` and the config file's `connections`, together (an id in
 * both places is refused, naming it), with their client credentials read from the environment.
 */
export function connectionSetup(
  input: ConnectionsInput | undefined,
  files: readonly ConfigSections[],
  env: Env,
  now: () => number,
): ConnectionSetup {
  const merged: ConnectionsConfig = {};
  const sections: ConnectionsConfig[] = files.flatMap((file) => (file.connections ? [file.connections] : []));
  if (input) {
    const result = connectionsSchema.safeParse(input);
    if (!result.success)
      throw new ConfigError(`Keyward configuration is invalid:\n${formatIssues(result.error.issues, 'connections')}`);
    sections.unshift(result.data);
  }
  for (const section of sections) {
    for (const [id, entry] of Object.entries(section)) {
      if (Object.hasOwn(merged, id)) {
        throw new ConfigError(
          `Keyward configuration is invalid:\n  - connections.${id}: configured twice (createKeyward and the config file); keep one`,
        );
      }
      merged[id] = entry;
    }
  }
  const providers = resolveConnections(merged, env);
  const clients = new Map<string, ProviderClient>();
  const refreshers = new Map<string, TokenRefresher>();
  for (const provider of providers.values()) {
    const client = new ProviderClient(provider, { now });
    clients.set(provider.id, client);
    refreshers.set(provider.id, (refreshToken) => client.refresh(refreshToken));
  }
  return { providers, clients, refreshers };
}
