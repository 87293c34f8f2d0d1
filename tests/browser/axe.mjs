// axe-core (the npm devDependency, never a CDN copy) run inside a page: the serious and critical
// WCAG violations of what the page shows now. Shared by every page's tests.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

/**
 * The serious and critical axe-core violations of `page` (a Playwright Page) in its current state:
 * `[{ id, impact, help, nodes: [{ target, summary }] }]`, empty when there are none, so a test
 * writes `assert.deepEqual(await axeViolations(page), [])` and a failure names the rule and the
 * elements. axe is evaluated through the DevTools protocol, which the pages' Content-Security-
 * Policy (script-src 'self') does not govern, so the page under test needs no change; it is
 * injected once per document.
 */
export async function axeViolations(page) {
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(axeSource);
  return page.evaluate(async () => {
    const { violations } = await window.axe.run(document, { resultTypes: ['violations'] });
    return violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        nodes: v.nodes.map((n) => ({ target: n.target.join(' '), summary: n.failureSummary })),
      }));
  });
}
