// The package's CommonJS build by path: this project resolves modules the Node 10 way (no "exports" subpaths).
import { countTokens as cl100kTokens } from 'gpt-tokenizer/cjs/encoding/cl100k_base';
import { countTokens as o200kTokens } from 'gpt-tokenizer/cjs/encoding/o200k_base';

/** OpenAI model families on the older `cl100k_base` encoding; everything else counts with `o200k_base`. */
const CL100K_MODELS = /^(gpt-4(?!o|\.1|\.5)|gpt-3\.5|text-embedding-(ada|3))/;

/**
 * Counts tokens with a real BPE tokenizer (`gpt-tokenizer`): the encoding of the OpenAI model family
 * (`o200k_base` for gpt-4o, gpt-4.1, o-series, gpt-5; `cl100k_base` for gpt-4 and gpt-3.5). Other
 * providers' models are counted with `o200k_base` as an approximation. Wherever a count from here is
 * stored it is flagged `estimated`.
 */
export function estimateTokens(text: string, model?: string): number {
  if (!text) return 0;
  const count = model !== undefined && CL100K_MODELS.test(model) ? cl100kTokens : o200kTokens;
  try {
    if (text.length <= MAX_COUNTED_CHARS && !LONG_RUN.test(text)) return count(text);
    return windowed(text, count);
  } catch {
    return wordsTimes13(text);
  }
}

/**
 * BPE merges within one pre-tokenized piece cost O(n²): 32,000 characters without whitespace take
 * ≈ 1.3 s, 900 KB would take minutes. Text with a run longer than this is counted in windows of this
 * size (each cut adds at most one token: an estimate errs high, which is safe for a reservation).
 */
const WINDOW = 512;
const LONG_RUN = new RegExp(`\\S{${WINDOW + 1}}`);
/** Beyond this many characters, the count of the first ones is extrapolated (bounded work per request). */
const MAX_COUNTED_CHARS = 200_000;

function windowed(text: string, count: (t: string) => number): number {
  const counted = Math.min(text.length, MAX_COUNTED_CHARS);
  const sample = text.slice(0, counted);
  let tokens = 0;
  if (LONG_RUN.test(sample))
    for (let i = 0; i < counted; i += WINDOW) tokens += count(sample.slice(i, i + WINDOW));
  else tokens = count(sample);
  return counted === text.length ? tokens : Math.ceil((tokens * text.length) / counted);
}

/** The system this library replaces estimated words × 1.3; kept only as the last resort. */
export function wordsTimes13(text: string): number {
  if (!text) return 0;
  let words = 0;
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    // Whitespace as /\s/ sees it: space, tab, line breaks, NBSP and the Unicode spaces.
    const space =
      c === 32 ||
      (c >= 9 && c <= 13) ||
      c === 160 ||
      c === 0x1680 ||
      (c >= 0x2000 && c <= 0x200a) ||
      c === 0x2028 ||
      c === 0x2029 ||
      c === 0x202f ||
      c === 0x205f ||
      c === 0x3000 ||
      c === 0xfeff;
    if (space) inWord = false;
    else if (!inWord) {
      inWord = true;
      words++;
    }
  }
  return Math.ceil(words * 1.3);
}
