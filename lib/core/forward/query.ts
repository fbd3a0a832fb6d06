/**
 * Query parameter names as an upstream's parser may read them. Reserved names (the credential's query
 * parameter, `_method`, `access_token`) must be refused in every spelling some server would take for them,
 * not only the exact one: `key%00`, `KEY%20` (sent on as `KEY+`), `key[]` and `_METHOD` all reached
 * upstreams next to the credential before.
 */

// Whitespace (Unicode's, as String.prototype.trim sees it), C0 control characters and DEL.
const EDGE_JUNK = /^[\s\x00-\x1f\x7f]+|[\s\x00-\x1f\x7f]+$/g;

/**
 * The name a lenient parser could take this one for: percent-decoded once more (URLSearchParams has decoded
 * once; some frameworks decode twice), cut at a NUL (C strings end there), trimmed of whitespace and control
 * characters, without an array or object suffix (`name[]`, `name[0]`, `name[a][b]`: PHP, Rails, qs) or brackets
 * around it (`[name]`: qs; `]name`, `name]`: Rack), with
 * PHP's folding to `_`, Unicode-compatibility normalised (NFKC: full-width letters) and
 * case-folded both ways (so `ſ` and the Kelvin sign match `s` and `k`, as Java's equalsIgnoreCase has it).
 */
export function queryParamKey(name: string): string {
  let key = decodeOnce(name);
  const nul = key.indexOf('\0');
  if (nul !== -1) key = key.slice(0, nul);
  key = key.replace(EDGE_JUNK, '');
  // qs reads `[name]` (no parent before the brackets) as `name`; Rack 2 skips leading `[` and `]`, and ends a
  // name at its first `]` (`name]` is `name`).
  key = key.replace(/^[[\]]+/, '');
  const close = key.indexOf(']');
  if (close !== -1 && !key.slice(0, close).includes('[')) key = key.slice(0, close).replace(EDGE_JUNK, '');
  const bracket = key.indexOf('[');
  if (bracket > 0 && key.includes(']', bracket)) key = key.slice(0, bracket).replace(EDGE_JUNK, '');
  // PHP turns `.`, spaces and an unclosed `[` in names into `_` (`api.key` arrives as `api_key`).
  return key.normalize('NFKC').toUpperCase().toLowerCase().replace(/[. []/g, '_');
}

/** True when `params` has a parameter that a lenient upstream could read as `reserved`. */
export function hasQueryParam(params: URLSearchParams, reserved: string): boolean {
  if (params.size === 0) return false;
  const wanted = queryParamKey(reserved);
  for (const name of params.keys()) {
    if (queryParamKey(name) === wanted) return true;
  }
  return false;
}

/** Decodes each run of %XX escapes on its own; a stray `%` or an invalid sequence is left as it is. */
function decodeOnce(name: string): string {
  if (!name.includes('%')) return name;
  return name.replace(/(?:%[0-9A-Fa-f]{2})+/g, (run) => {
    try {
      return decodeURIComponent(run);
    } catch {
      return run;
    }
  });
}
