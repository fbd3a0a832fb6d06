import type { Locator, Page } from '@playwright/test';
import { demoDashboardTest as test } from './demo-dashboard';
import { expect, signIn } from './production';

/**
 * The admin pages as people see and hear them, over the demo traffic, at a desktop's width (1280 px) and a phone's
 * (390 px), in the light and the dark scheme: one focus ring for every control, never clipped; figures that fit
 * their cards; tables that stack on a phone rather than scroll sideways or break words; controls whose names say
 * what they act on; charts that are described, not tab stops; control borders of at least 3:1 (WCAG 1.4.11); charts
 * drawn in the scheme's own colours. Each page is photographed at both widths in both schemes.
 */

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const SCHEMES = ['light', 'dark'] as const;

/** Presses Tab until `target` has the focus (keyboard focus: `:focus-visible` applies). */
async function tabTo(page: Page, target: Locator): Promise<void> {
  const handle = await target.elementHandle();
  for (let i = 0; i < 80; i++) {
    await page.keyboard.press('Tab');
    if (await page.evaluate((el) => el === document.activeElement, handle)) return;
  }
  throw new Error(`Tab never reached ${target}`);
}

/** The focused element's outline, and whether a box that clips its overflow cuts the ring off. */
function focusRing(target: Locator) {
  return target.evaluate((el) => {
    const style = getComputedStyle(el);
    const reach = parseFloat(style.outlineWidth) + parseFloat(style.outlineOffset);
    const box = el.getBoundingClientRect();
    let clipped = false;
    for (let parent = el.parentElement; parent && parent !== document.body; parent = parent.parentElement) {
      const ps = getComputedStyle(parent);
      if (ps.overflowX === 'visible' && ps.overflowY === 'visible') continue;
      const p = parent.getBoundingClientRect();
      const left = p.left + parent.clientLeft;
      const top = p.top + parent.clientTop;
      if (box.left - reach < left || box.top - reach < top || box.right + reach > left + parent.clientWidth || box.bottom + reach > top + parent.clientHeight) clipped = true;
    }
    return { style: style.outlineStyle, width: parseFloat(style.outlineWidth), color: style.outlineColor, clipped };
  });
}

/** A CSS variable of the page's design system as the browser resolves it in the current scheme: "rgb(r, g, b)". */
function cssColour(page: Page, name: string): Promise<string> {
  return page.evaluate((name) => {
    const probe = document.createElement('div');
    probe.style.color = `var(${name})`;
    document.body.append(probe);
    const colour = getComputedStyle(probe).color;
    probe.remove();
    return colour;
  }, name);
}

/** WCAG contrast ratio of two computed "rgb(...)" colours. */
function contrast(a: string, b: string): number {
  const luminance = (colour: string) => {
    const [r, g, bl] = colour.match(/[\d.]+/g)!.slice(0, 3).map((v) => {
      const c = Number(v) / 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r! + 0.7152 * g! + 0.0722 * bl!;
  };
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi! + 0.05) / (lo! + 0.05);
}

/** Words (of two characters or more) inside `root` that the layout split over two lines. */
function brokenWords(root: Locator): Promise<string[]> {
  return root.evaluate((el) => {
    const broken: string[] = [];
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      // Text not shown (a closed <details>'s record) has no lines.
      if (!node.parentElement?.checkVisibility()) continue;
      const text = node.textContent ?? '';
      for (const match of text.matchAll(/\S{2,}/g)) {
        const range = document.createRange();
        range.setStart(node, match.index);
        range.setEnd(node, match.index + match[0].length);
        if (range.getClientRects().length > 1) broken.push(match[0]);
      }
    }
    return broken;
  });
}

/** Both widths and both schemes, one full-page picture each, after the charts have drawn. */
async function photograph(page: Page, name: string): Promise<void> {
  for (const scheme of SCHEMES) {
    await page.emulateMedia({ colorScheme: scheme });
    for (const [label, size] of [['desktop', DESKTOP], ['phone', PHONE]] as const) {
      await page.setViewportSize(size);
      await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
      await page.screenshot({ path: test.info().outputPath(`${name}-${label}-${scheme}.png`), fullPage: true, animations: 'disabled' });
    }
  }
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize(DESKTOP);
}

test.beforeEach(async ({ page, demo }) => {
  await page.setViewportSize(DESKTOP);
  await signIn(page, demo.admin.username, demo.admin.password);
});

test('one focus ring, the accent’s, on links, the period switch, chips, buttons and inputs, never clipped', async ({ page }) => {
  for (const scheme of SCHEMES) {
    await page.emulateMedia({ colorScheme: scheme });
    const accent = await cssColour(page, '--accent');
    const expectRing = async (target: Locator) => {
      await tabTo(page, target);
      expect({ target: String(target), ...(await focusRing(target)) }).toEqual({ target: String(target), style: 'solid', width: 2, color: accent, clipped: false });
    };

    await page.goto('/admin');
    await expectRing(page.getByRole('navigation', { name: 'Admin' }).getByRole('link', { name: 'Keys' }));
    await expectRing(page.getByTestId('period-switch').getByRole('link', { name: '1 h' }));
    await expectRing(page.getByTestId('upstream-filter').getByRole('link', { name: 'demo', exact: true }));

    await page.goto('/admin/audit');
    await expectRing(page.getByLabel('Type'));
    await expectRing(page.getByLabel('User'));
    await expectRing(page.getByLabel('Since (UTC)'));
    await expectRing(page.getByRole('link', { name: 'Clear' }));
    await expectRing(page.getByRole('button', { name: 'Apply filters' }));

    await page.goto('/admin/keys');
    await expectRing(page.getByRole('button', { name: /^Revoke/ }).first());

    // On a phone a stacked table's first link sits at the card's edge: nothing around it clips its ring.
    await page.setViewportSize(PHONE);
    await page.goto('/admin/users');
    await expectRing(page.getByTestId('user-link').first());
    await page.setViewportSize(DESKTOP);
  }
});

test('figures fit their cards at a desktop’s and a phone’s width, the longest latency too', async ({ page }) => {
  await page.goto('/admin');
  await expect(page.getByTestId('stat-latency')).not.toHaveText('–');
  const overflowing = () =>
    page.locator('.stat').evaluateAll((cards) =>
      cards.flatMap((card) => {
        const value = card.querySelector('.stat-value')!;
        const inner = card.getBoundingClientRect().right - parseFloat(getComputedStyle(card).paddingRight);
        return value.scrollWidth > value.clientWidth || value.getBoundingClientRect().right > inner || [...value.getClientRects()].some((r) => r.right > inner) ? [value.textContent] : [];
      }),
    );
  for (const size of [DESKTOP, PHONE]) {
    await page.setViewportSize(size);
    expect(await overflowing()).toEqual([]);
    // The widest latency the overview writes (ms() in app/admin/page.tsx): under a second, then over a minute.
    await page.getByTestId('stat-latency').evaluate((el) => (el.textContent = '999\u00a0ms / 120.00\u00a0s'));
    expect(await overflowing()).toEqual([]);
    await page.reload();
  }
});

test('on a phone, Audit and Users stack each row: no sideways scrolling, no word broken over two lines', async ({ page }) => {
  await page.setViewportSize(PHONE);
  for (const [path, table] of [
    ['/admin/audit', 'audit-records'],
    ['/admin/users', 'users-table'],
    ['/admin', 'top-users'],
    ['/admin', 'top-keys'],
  ] as const) {
    await page.goto(path);
    const card = page.getByTestId(table);
    await expect(card.locator('tbody tr').first()).toBeVisible();
    expect(await card.locator('.table-scroll').evaluate((el) => el.scrollWidth - el.clientWidth), path).toBeLessThanOrEqual(0);
    expect(await brokenWords(card.locator('table')), path).toEqual([]);
    expect(await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth), path).toBeLessThanOrEqual(0);
  }
  // Audit's rows: each labelled cell ("Who", "Key") shows its label above its value, as the Keys page's do.
  const row = page.getByTestId('audit-record').first();
  await page.goto('/admin/audit');
  await expect(page.getByTestId('audit-records').locator('thead')).toBeHidden();
  expect(await row.locator('td[data-label="Who"]').evaluate((td) => getComputedStyle(td, '::before').content)).toBe('"Who"');
});

test('names and states for assistive technology: key actions name their key, charts are described images, the chosen upstream is marked', async ({ page }) => {
  await page.goto('/admin/keys');
  const ring = page.getByTestId('key-ring-demo');
  await expect(ring.getByRole('button', { name: 'Rotate the demo key…', exact: true })).toBeVisible();
  const fingerprints = await ring.locator('[data-testid^="key-version-"]').evaluateAll((rows) => rows.map((row) => row.getAttribute('data-testid')!.slice('key-version-'.length)));
  expect(fingerprints.length).toBeGreaterThan(0);
  for (const fingerprint of fingerprints) {
    await expect(ring.getByTestId(`key-version-${fingerprint}`).getByRole('button')).toHaveAccessibleName(`Revoke demo key version ${fingerprint}…`);
  }

  await page.goto('/admin');
  await expect(page.getByRole('application')).toHaveCount(0);
  for (const [name, described] of [
    ['Calls and errors', /^\d+ calls and \d+ errors; most calls at \d\d:\d\d \(\d+\)\.$/],
    ['Error rate (%)', /^Highest error rate \d+(\.\d+)?% at \d\d:\d\d\.$/],
    ['Latency p50 / p95 (ms)', /^Highest p95 \d+ ms at \d\d:\d\d; highest p50 \d+ ms at \d\d:\d\d\.$/],
    // The demo's upstream counts no budget units.
    ['Budget units', /^(\d+ budget units; most at \d\d:\d\d \(\d+\)|No budget units used)\.$/],
  ] as const) {
    const chart = page.getByRole('img', { name, exact: true });
    await expect(chart).toBeVisible();
    await expect(chart).toHaveAccessibleDescription(described);
  }
  // Not a tab stop that says nothing: no chart surface takes the focus.
  await expect(page.locator('.recharts-surface').first()).toBeVisible();
  await expect(page.locator('.recharts-surface[tabindex]')).toHaveCount(0);

  const chips = page.getByTestId('upstream-filter');
  await expect(chips.getByRole('link', { name: 'All', exact: true })).toHaveAttribute('aria-current', 'true');
  await expect(chips.getByRole('link', { name: 'demo', exact: true })).not.toHaveAttribute('aria-current', /.*/);
  await chips.getByRole('link', { name: 'demo', exact: true }).click();
  await expect(page).toHaveURL(/upstream=demo/);
  await expect(chips.getByRole('link', { name: 'demo', exact: true })).toHaveAttribute('aria-current', 'true');
  await expect(chips.getByRole('link', { name: 'All', exact: true })).not.toHaveAttribute('aria-current', /.*/);
});

test('control borders stand out 3:1 from what they sit on, and charts use the scheme’s colours', async ({ page }) => {
  for (const scheme of SCHEMES) {
    await page.emulateMedia({ colorScheme: scheme });
    await page.goto('/admin/audit');
    const [surface, bg] = [await cssColour(page, '--surface'), await cssColour(page, '--bg')];
    for (const control of [page.getByLabel('Type'), page.getByLabel('User'), page.getByLabel('Since (UTC)'), page.getByRole('link', { name: 'Clear' })]) {
      const border = await control.evaluate((el) => getComputedStyle(el).borderTopColor);
      expect(contrast(border, surface), `${scheme} ${control}`).toBeGreaterThanOrEqual(3);
    }
    await page.goto('/admin');
    for (const chip of [page.getByTestId('upstream-filter').getByRole('link', { name: 'demo', exact: true }), page.getByTestId('period-switch')]) {
      const border = await chip.evaluate((el) => getComputedStyle(el).borderTopColor);
      expect(contrast(border, bg), `${scheme} ${chip}`).toBeGreaterThanOrEqual(3);
    }

    const [grid, muted, accent, danger] = await Promise.all(['--border', '--muted', '--accent', '--danger'].map((name) => cssColour(page, name)));
    const chart = page.getByTestId('chart-calls');
    await expect(chart.locator('.recharts-cartesian-grid line').first()).toBeAttached();
    const strokes = await chart.locator('.recharts-cartesian-grid line').evaluateAll((lines) => [...new Set(lines.map((line) => getComputedStyle(line).stroke))]);
    expect(strokes, scheme).toEqual([grid]);
    const ticks = await chart.locator('.recharts-cartesian-axis-tick-value').evaluateAll((texts) => [...new Set(texts.map((text) => getComputedStyle(text).fill))]);
    expect(ticks, scheme).toEqual([muted]);
    const bars = await chart.locator('.recharts-bar-rectangle path').evaluateAll((paths) => [...new Set(paths.map((path) => getComputedStyle(path).fill))]);
    expect(bars.sort(), scheme).toEqual([accent, danger].sort());
  }
});

test('pictures of every admin page at both widths in both schemes', async ({ page }) => {
  test.setTimeout(180_000);
  for (const path of ['/admin', '/admin/keys', '/admin/users', '/admin/audit']) {
    await page.goto(path);
    await expect(page.getByRole('heading', { level: 1 })).toBeVisible();
    await photograph(page, path.replace(/^\//, '').replace(/\//g, '-'));
  }
});
