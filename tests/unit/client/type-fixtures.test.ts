import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { typecheck, withoutExpectErrors } from '../../fixtures/typecheck';

/**
 * tests/types/client-inference.ts is compiled by `npm run typecheck`; here it is compiled on its own, and once more
 * with its `@ts-expect-error` directives disabled: each must then be an error on the line it marks, and nothing
 * else may be. A wrong path, method, parameter or body field that stopped being a compile error fails this test.
 */
const FIXTURE = 'tests/types/client-inference.ts';

describe('typed client inference (type test)', { timeout: 120_000 }, () => {
  it('compiles', () => {
    expect(typecheck([FIXTURE])).toEqual([]);
  });

  it('every @ts-expect-error line is an error without its directive, and no other line is', () => {
    const { text, expectedLines } = withoutExpectErrors(readFileSync(FIXTURE, 'utf8'));
    expect(expectedLines.length).toBeGreaterThan(20);
    const problems = typecheck([FIXTURE], new Map([[resolve(FIXTURE), text]]));
    const lines = [...new Set(problems.map((problem) => problem.line))].sort((a, b) => a - b);
    expect(lines).toEqual(expectedLines);
  });
});
