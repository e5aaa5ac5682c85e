/**
 * Server-rendered HTML for the dashboard: a tagged template that escapes every interpolated value unless
 * it is markup built here (`Html`), charts as inline SVG with a table behind each, no script at all.
 */

/** Markup that is safe to insert as it is (built by `html` or the helpers below). */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

const ESCAPES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
};

/** Text as HTML text or attribute value (quoted). NUL and other C0 controls become U+FFFD. */
export function escapeHtml(value: string): string {
  return (
    value
      .replace(/[&<>"']/g, (c) => ESCAPES[c])
      // eslint-disable-next-line no-control-regex -- C0 controls are what it replaces
      .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/g, '\ufffd')
  );
}

type Part = Html | string | number | null | undefined | false | readonly Part[];

function render(part: Part): string {
  if (part === null || part === undefined || part === false) return '';
  if (part instanceof Html) return part.text;
  if (Array.isArray(part)) return part.map(render).join('');
  return escapeHtml(String(part));
}

/** `html\`<p>${text}</p>\``: interpolations are escaped, `Html` values and arrays of them are inserted. */
export function html(strings: TemplateStringsArray, ...parts: Part[]): Html {
  let out = strings[0];
  for (let i = 0; i < parts.length; i++) out += render(parts[i]) + strings[i + 1];
  return new Html(out);
}

const CSS = `
:root { color-scheme: light; --fg: #1d2330; --muted: #5b6474; --line: #d9dee7; --bar: #3358d4; --warn: #c2410c;
  --bad: #b42318; --ok: #15803d; --bg: #fff; --panel: #f6f8fb; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg);
  margin: 0; }
header { background: #111827; color: #fff; padding: 14px 24px; }
header p { margin: 2px 0 0; color: #cbd5e1; font-size: 13px; }
header h1 { margin: 0; font-size: 20px; }
main { max-width: 980px; margin: 0 auto; padding: 8px 24px 32px; }
section { margin: 22px 0; }
h2 { font-size: 17px; margin: 0 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 4px; }
.limits { display: grid; grid-template-columns: repeat(auto-fill, minmax(290px, 1fr)); gap: 12px; }
.limit { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.limit meter { width: 100%; height: 16px; }
.limit p { margin: 4px 0 0; font-size: 13px; color: var(--muted); }
.limit .figures { color: var(--fg); font-size: 14px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
details { margin-top: 6px; }
summary { cursor: pointer; color: var(--muted); font-size: 13px; }
svg { max-width: 100%; height: auto; }
svg .bar { fill: var(--bar); }
svg .refused { fill: var(--bad); }
svg .axis { stroke: var(--line); }
svg text { font-size: 11px; fill: var(--muted); }
.flag { display: inline-block; border: 1px solid var(--line); border-radius: 3px; padding: 0 4px; font-size: 12px; }
.status-up { color: var(--ok); font-weight: 600; }
.status-down { color: var(--bad); font-weight: 600; }
.empty { color: var(--muted); }
dl.stats { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.stats dt { color: var(--muted); }
dl.stats dd { margin: 0; font-variant-numeric: tabular-nums; }
a { color: #1d4ed8; }
`;

/** A whole page: language, title, the stylesheet under the response's CSP nonce, header and main. */
export function page(options: {
  lang: string;
  title: string;
  subtitle: Html | string;
  nonce: string;
  body: Html;
}): string {
  return `<!doctype html>${
    html`<html lang="${options.lang}">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="referrer" content="no-referrer" />
        <link rel="icon" href="data:," />
        <title>${options.title}</title>
        <style nonce="${options.nonce}">
          ${new Html(CSS)}
        </style>
      </head>
      <body>
        <header>
          <h1>${options.title}</h1>
          <p>${options.subtitle}</p>
        </header>
        <main>${options.body}</main>
      </body>
    </html>`.text
  }`;
}

/** The Content-Security-Policy of a page whose only inline content is the stylesheet with `nonce`. */
export function contentSecurityPolicy(nonce: string): string {
  return [
    "default-src 'none'",
    `style-src 'nonce-${nonce}'`,
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
}

/** One bar of a chart: its label (the table's first column), its value and how to show the value. */
export interface ChartBar {
  label: string;
  value: number;
  shown: string;
}

/**
 * A bar chart as inline SVG (`role="img"`, titled, each bar with its own `<title>`), followed by the same
 * figures as a table in a `<details>`: the numbers are there without JavaScript or a pointer.
 */
export function barChart(options: {
  id: string;
  title: string;
  bars: ChartBar[];
  columns: [string, string];
  /** A second series drawn on top (e.g. refusals), in the same units. */
  stacked?: { name: string; values: number[]; shown: string[] };
}): Html {
  const { bars, stacked } = options;
  const width = 720;
  const height = 170;
  const top = 10;
  const bottom = 24;
  const left = 28;
  const plot = height - top - bottom;
  const max = Math.max(1e-12, ...bars.map((b, i) => b.value + (stacked?.values[i] ?? 0)));
  const step = bars.length ? (width - left * 2) / bars.length : 0;
  const w = Math.max(1, step * 0.7);
  const labelEvery = Math.max(1, Math.ceil(bars.length / 12));
  const shapes = bars.map((b, i) => {
    const x = left + i * step + (step - w) / 2;
    const h = (b.value / max) * plot;
    const extra = stacked ? (stacked.values[i] / max) * plot : 0;
    return html`<g
      ><title>${b.label}: ${b.shown}${stacked ? `, ${stacked.name} ${stacked.shown[i]}` : ''}</title
      ><rect
        class="bar"
        x="${x.toFixed(1)}"
        y="${(top + plot - h).toFixed(1)}"
        width="${w.toFixed(1)}"
        height="${h.toFixed(1)}"
      ></rect
      >${
        stacked && extra > 0
          ? html`<rect
              class="refused"
              x="${x.toFixed(1)}"
              y="${(top + plot - h - extra).toFixed(1)}"
              width="${w.toFixed(1)}"
              height="${extra.toFixed(1)}"
            ></rect>`
          : ''
      }${
        i % labelEvery === 0
          ? html`<text x="${(x + w / 2).toFixed(1)}" y="${height - 8}" text-anchor="middle">${b.label}</text>`
          : ''
      }</g
    >`;
  });
  const headers = stacked ? [...options.columns, stacked.name] : options.columns;
  return html`<figure>
    <svg
      role="img"
      aria-labelledby="${options.id}-title"
      viewBox="0 0 ${width} ${height}"
      width="${width}"
      height="${height}"
    >
      <title id="${options.id}-title">${options.title}</title>
      <line class="axis" x1="0" y1="${top + plot}" x2="${width}" y2="${top + plot}"></line>
      ${shapes}
    </svg>
    <details>
      <summary>${options.title}: table</summary>
      <table id="${options.id}-table">
        <caption>
          ${options.title}
        </caption>
        <thead>
          <tr>
            ${headers.map((h, i) => html`<th scope="col" ${i > 0 ? html` class="num"` : ''}>${h}</th>`)}
          </tr>
        </thead>
        <tbody>
          ${bars.map(
            (b, i) =>
              html`<tr>
                <th scope="row">${b.label}</th>
                <td class="num">${b.shown}</td>
                ${stacked ? html`<td class="num">${stacked.shown[i]}</td>` : ''}
              </tr>`,
          )}
        </tbody>
      </table>
    </details>
  </figure>`;
}

/** A table with a caption, or a line saying it is empty. */
export function table(options: {
  id: string;
  caption: string;
  head: { label: string; numeric?: boolean }[];
  rows: Part[][];
  empty: string;
}): Html {
  if (options.rows.length === 0) return html`<p class="empty" id="${options.id}">${options.empty}</p>`;
  return html`<table id="${options.id}">
    <caption>
      ${options.caption}
    </caption>
    <thead>
      <tr>
        ${options.head.map(
          (h) => html`<th scope="col" ${h.numeric ? html` class="num"` : ''}>${h.label}</th>`,
        )}
      </tr>
    </thead>
    <tbody>
      ${options.rows.map(
        (r) =>
          html`<tr>
            ${r.map((cell, i) =>
              options.head[i]?.numeric ? html`<td class="num">${cell}</td>` : html`<td>${cell}</td>`,
            )}
          </tr>`,
      )}
    </tbody>
  </table>`;
}
