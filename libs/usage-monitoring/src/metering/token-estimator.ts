/**
 * Estimates tokens from text where no provider figure exists, as the original did (words × 1.3,
 * rounded up). Estimates are always flagged `estimated` where stored.
 */
export function estimateTokens(text: string): number {
  if (!text) return 0;
  const words = text.trim().split(/\s+/).filter(Boolean).length;
  return Math.ceil(words * 1.3);
}
