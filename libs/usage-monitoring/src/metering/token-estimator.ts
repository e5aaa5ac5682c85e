/**
 * Estimates tokens from text where no provider figure exists, as the original did (words × 1.3,
 * rounded up). Estimates are always flagged `estimated` where stored.
 */
export function estimateTokens(text: string): number {
  if (!text) return 0;
  let words = 0;
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    // Whitespace as /\s/ sees it in practice: space, tab, line breaks, NBSP and the Unicode spaces.
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
