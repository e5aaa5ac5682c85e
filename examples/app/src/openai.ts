import OpenAI from 'openai';

/** The app's OpenAI client (`OPENAI_BASE_URL` points it at a fake upstream in the smoke test). */
export const openai = new OpenAI({
  apiKey: process.env.OPENAI_API_KEY ?? 'unused',
  baseURL: process.env.OPENAI_BASE_URL,
  maxRetries: 0,
});
