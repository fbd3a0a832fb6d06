/**
 * Test-side statement of what "scrubbed" means, written independently of lib/core/log/scrub.ts:
 * the forms a secret takes in transit, and a leftmost-longest whole-input replacement over bytes.
 */
export const MARKER_TEXT = '[REDACTED]';
const MARKER = Buffer.from(MARKER_TEXT, 'utf8');

/** Raw, URL-encoded (encodeURIComponent), JSON-escaped, base64 (padded and not) and base64url. */
export function expectedForms(secret: string): string[] {
  const base64 = Buffer.from(secret, 'utf8').toString('base64');
  return [
    ...new Set([
      secret,
      encodeURIComponent(secret),
      // application/x-www-form-urlencoded, as URLSearchParams writes a query credential.
      new URLSearchParams({ k: secret }).toString().slice(2),
      JSON.stringify(secret).slice(1, -1),
      base64,
      base64.replace(/=+$/, ''),
      Buffer.from(secret, 'utf8').toString('base64url'),
    ]),
  ];
}

export function formBuffers(secrets: readonly string[]): Buffer[] {
  const all = new Set<string>();
  for (const secret of secrets) for (const form of expectedForms(secret)) all.add(form);
  return [...all].map((form) => Buffer.from(form, 'utf8'));
}

/** True when one form occurs inside another (e.g. unpadded base64 inside padded base64). */
export function formsNest(forms: readonly Buffer[]): boolean {
  return forms.some((a, i) => forms.some((b, j) => i !== j && b.length > a.length && b.includes(a)));
}

/** Scans left to right; at each position replaces the longest form that starts there. */
export function referenceScrub(input: Buffer, forms: readonly Buffer[]): Buffer {
  const out: Buffer[] = [];
  const firstBytes = new Set(forms.map((form) => form[0]));
  let literalStart = 0;
  let i = 0;
  while (i < input.length) {
    if (!firstBytes.has(input[i])) {
      i++;
      continue;
    }
    let best = 0;
    for (const form of forms) {
      if (form.length > best && i + form.length <= input.length && input.compare(form, 0, form.length, i, i + form.length) === 0) {
        best = form.length;
      }
    }
    if (best > 0) {
      out.push(input.subarray(literalStart, i), MARKER);
      i += best;
      literalStart = i;
    } else {
      i++;
    }
  }
  out.push(input.subarray(literalStart));
  return Buffer.concat(out);
}

/** The same replacement on JS strings (UTF-16 code units, so lone surrogates survive). */
export function referenceScrubText(text: string, secrets: readonly string[]): string {
  const forms = [...new Set(secrets.flatMap(expectedForms))];
  let out = '';
  let i = 0;
  while (i < text.length) {
    let best = '';
    for (const form of forms) if (form.length > best.length && text.startsWith(form, i)) best = form;
    if (best) {
      out += MARKER_TEXT;
      i += best.length;
    } else {
      out += text[i];
      i++;
    }
  }
  return out;
}

/** True when one form occurs inside another (string version). */
export function textFormsNest(secrets: readonly string[]): boolean {
  const forms = [...new Set(secrets.flatMap(expectedForms))];
  return forms.some((a, i) => forms.some((b, j) => i !== j && b.length > a.length && b.includes(a)));
}

/** True when some suffix of `data` is a proper prefix of a form: a streaming scrubber may hold it back. */
export function endsInPartialForm(data: Buffer, forms: readonly Buffer[]): boolean {
  for (const form of forms) {
    for (let length = Math.min(form.length - 1, data.length); length > 0; length--) {
      if (data.compare(form, 0, length, data.length - length, data.length) === 0) return true;
    }
  }
  return false;
}

/**
 * True when a form begins with the end of the marker or ends with its start (or contains it): the marker
 * next to input text can then spell the form, e.g. a secret ending in "[" followed by a replaced secret.
 * Such output holds no more of the secret than the input did, so the "no form in the output" check skips them.
 */
export function overlapsMarker(forms: readonly (string | Buffer)[]): boolean {
  return forms.some((f) => {
    const form = f.toString();
    if (form.includes(MARKER_TEXT)) return true;
    for (let k = 1; k < MARKER_TEXT.length; k++) {
      if (form.endsWith(MARKER_TEXT.slice(0, k)) || form.startsWith(MARKER_TEXT.slice(-k))) return true;
    }
    return false;
  });
}

export function containsAnyForm(data: Buffer, forms: readonly Buffer[]): boolean {
  return forms.some((form) => data.includes(form));
}

/** A secret with every character that means something in a regular expression. */
export const REGEX_SPECIAL_SECRET = 'a.b*c+d?e(f)[g]{h}|i^j$k\\l';
