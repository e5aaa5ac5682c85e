import { encode as cl100k } from 'gpt-tokenizer/cjs/encoding/cl100k_base';
import { encode as o200k } from 'gpt-tokenizer/cjs/encoding/o200k_base';
import { TOKENIZER_CORPUS } from './fixtures/tokenizer-corpus';
import { estimateTokens, wordsTimes13 } from './token-estimator';

describe('token estimates', () => {
  // Token ids of tiktoken, the reference encoder, as published in OpenAI's cookbook
  // ("How to count tokens with tiktoken").
  it.each([
    ['tiktoken is great!', [83, 1609, 5963, 374, 2294, 0], [83, 8251, 2488, 382, 2212, 0]],
    ['hello world', [15339, 1917], [24912, 2375]],
    ['2 + 2 = 4', [17, 489, 220, 17, 284, 220, 19], [17, 659, 220, 17, 314, 220, 19]],
  ])('%j encodes like tiktoken (cl100k_base and o200k_base)', (text, cl, o) => {
    expect(cl100k(text)).toEqual(cl);
    expect(o200k(text)).toEqual(o);
    expect(estimateTokens(text, 'gpt-4')).toBe(cl.length);
    expect(estimateTokens(text, 'gpt-4o-mini')).toBe(o.length);
  });

  it.each([
    ['antidisestablishmentarianism', 6, 6],
    ['お誕生日おめでとう', 9, 8],
  ])('%j counts %i tokens with cl100k_base and %i with o200k_base', (text, cl, o) => {
    expect(estimateTokens(text, 'gpt-3.5-turbo')).toBe(cl);
    expect(estimateTokens(text, 'gpt-4o')).toBe(o);
    // Other providers' models are approximated with o200k_base.
    expect(estimateTokens(text, 'claude-3-5-sonnet')).toBe(o);
  });

  // The README's table: how far the old words × 1.3 is from the tokenizer (o200k_base) on a fixed corpus.
  it.each([
    ['english', 59, 69],
    ['code', 85, 50],
    ['cjk', 58, 2],
  ] as const)('corpus %s: tokenizer %i, words × 1.3 %i', (kind, tokens, words) => {
    expect(estimateTokens(TOKENIZER_CORPUS[kind], 'gpt-4o')).toBe(tokens);
    expect(wordsTimes13(TOKENIZER_CORPUS[kind])).toBe(words);
  });

  it('pathological input stays bounded: long runs are counted in windows, very long text extrapolated', () => {
    // o200k_base packs a run of "a" 8 characters per token.
    expect(estimateTokens('a'.repeat(3_000), 'gpt-4o')).toBe(375);
    // 900 KB without whitespace (minutes of BPE merges if counted whole): the first 200,000 characters
    // are counted in 512-character windows, 25,000 tokens, × 4.5.
    expect(estimateTokens('a'.repeat(900_000), 'gpt-4o')).toBe(112_500);
    // Ordinary text beyond 200,000 characters: within 0.1 % of the full count (150,002 tokens).
    const long = 'lorem ipsum dolor '.repeat(50_000);
    expect(Math.abs(estimateTokens(long, 'gpt-4o') - 150_002)).toBeLessThan(150);
  });
});
