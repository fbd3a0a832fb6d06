import { z } from 'zod';
import { commonPresetOptions, definePreset, presetFunction, type RouteInput } from './preset';

/**
 * GitHub's REST API (https://docs.github.com/rest) with a service token (a fine-grained personal access token or
 * a GitHub App installation token). Read routes for repositories, issues, pull requests, contents, commits and
 * releases; `write: true` adds opening issues and commenting. `repos` pins the routes to named repositories:
 * with one shared token, every signed-in user can otherwise reach whatever the token can.
 *
 * GitHub's page links (`Link: <https://api.github.com/repositories/1296269/issues?page=2>; rel="next"`) name the
 * repository by id. Keyward declares no `/repositories/:id/…` routes, which would be a second path to each
 * repository, around `repos` (an id names any repository the token can reach) and every check made on
 * `/repos/:owner/:repo/…`: with `links: "same-path"`, each page link is written on the path the client called
 * (`/api/proxy/github/repos/acme/widgets/issues?page=2`), so `octokit.paginate` keeps to the same route.
 */

const REPO = /^[A-Za-z0-9_.-]{1,100}\/[A-Za-z0-9_.-]{1,100}$/;

const options = z.strictObject({
  ...commonPresetOptions,
  repos: z
    .array(z.string().regex(REPO, 'must be "owner/name"').refine((name) => !name.split('/').some((part) => part === '.' || part === '..'), 'must be "owner/name"'))
    .min(1)
    .max(64)
    .optional()
    .describe('Only these repositories ("owner/name"); absent: any repository the token can reach.'),
  write: z.boolean().default(false).describe('Also allow opening issues and commenting on them (default false: read-only).'),
});

type Options = z.output<typeof options>;

const page = { per_page: z.string().regex(/^\d{1,3}$/).optional(), page: z.string().regex(/^\d{1,6}$/).optional() };
const text = (max: number) => z.string().max(max).optional();
const sortDirection = { direction: z.enum(['asc', 'desc']).optional() };

export const issuesQuery = z.object({
  ...page,
  ...sortDirection,
  state: z.enum(['open', 'closed', 'all']).optional(),
  labels: text(512),
  sort: z.enum(['created', 'updated', 'comments']).optional(),
  since: text(64),
  assignee: text(100),
  creator: text(100),
  mentioned: text(100),
  milestone: text(32),
});
export const pullsQuery = z.object({
  ...page,
  ...sortDirection,
  state: z.enum(['open', 'closed', 'all']).optional(),
  head: text(256),
  base: text(256),
  sort: z.enum(['created', 'updated', 'popularity', 'long-running']).optional(),
});
export const commitsQuery = z.object({ ...page, sha: text(256), path: text(1024), author: text(100), since: text(64), until: text(64) });
export const newIssueBody = z.object({
  title: z.string().min(1).max(256),
  body: z.string().max(65_536).optional(),
  labels: z.array(z.string().max(100)).max(20).optional(),
});
export const commentBody = z.object({ body: z.string().min(1).max(65_536) });

// Issue and pull request numbers are typed (`{…:int}`): an untyped parameter would also take GitHub's
// repository-wide lists (`issues/comments`, `issues/events`, `pulls/comments`) and serve them as one issue.
function routesFor(repo: string, write: boolean): RouteInput[] {
  const read: RouteInput[] = [
    { method: 'GET', path: repo },
    { method: 'GET', path: `${repo}/issues`, query: issuesQuery },
    { method: 'GET', path: `${repo}/issues/{issue_number:int}` },
    { method: 'GET', path: `${repo}/issues/{issue_number:int}/comments`, query: z.object(page) },
    { method: 'GET', path: `${repo}/pulls`, query: pullsQuery },
    { method: 'GET', path: `${repo}/pulls/{pull_number:int}` },
    { method: 'GET', path: `${repo}/commits`, query: commitsQuery },
    { method: 'GET', path: `${repo}/contents/*`, query: z.object({ ref: text(256) }) },
    { method: 'GET', path: `${repo}/releases`, query: z.object(page) },
    { method: 'GET', path: `${repo}/releases/latest` },
  ];
  if (!write) return read;
  return [
    ...read,
    { method: 'POST', path: `${repo}/issues`, body: newIssueBody, maxRequestBytes: 128 * 1024 },
    { method: 'POST', path: `${repo}/issues/{issue_number:int}/comments`, body: commentBody, maxRequestBytes: 128 * 1024 },
  ];
}

function routes(o: Options): RouteInput[] {
  const repos = o.repos ? o.repos.map((name) => `/repos/${name}`) : ['/repos/:owner/:repo'];
  return repos.flatMap((repo) => routesFor(repo, o.write));
}

export const githubPreset = definePreset({
  name: 'github',
  options,
  build: (o) => ({
    baseUrl: 'https://api.github.com/',
    auth: { type: 'bearer', secret: o.secret ?? { env: 'GITHUB_TOKEN' } },
    requestHeaders: ['x-github-api-version'],
    responseHeaders: ['x-github-request-id', 'x-ratelimit-used', 'x-ratelimit-resource'],
    links: 'same-path',
    routes: routes(o),
    keys: o.secret === undefined || 'env' in o.secret ? { canary: { method: 'GET', path: '/rate_limit' } } : undefined,
  }),
});

/** `github({ repos: ['acme/widgets'], write: true })`. */
export const github = presetFunction(githubPreset);
