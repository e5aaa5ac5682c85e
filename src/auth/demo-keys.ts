export interface DemoKey {
  user: string;
  plan: string;
}

/** Used when DEMO_API_KEYS is not set; printed at start. */
export const BUILT_IN_KEYS: Record<string, DemoKey> = {
  'demo-free-key': { user: 'alice@example.com', plan: 'free' },
  'demo-pro-key': { user: 'bob@example.com', plan: 'pro' },
};

/**
 * Parses DEMO_API_KEYS: a JSON object `{ "<key>": { "user": "<user id>", "plan": "<plan>" } }`.
 * @throws Error naming the bad entry.
 */
export function loadDemoKeys(raw: string | undefined, plans: readonly string[]): Map<string, DemoKey> {
  if (raw === undefined || raw.trim() === '') return new Map(Object.entries(BUILT_IN_KEYS));
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (e) {
    throw new Error(`DEMO_API_KEYS is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new Error('DEMO_API_KEYS must be a JSON object { "<key>": { "user": "...", "plan": "..." } }');
  }
  const keys = new Map<string, DemoKey>();
  for (const [key, v] of Object.entries(parsed as Record<string, unknown>)) {
    const entry = v as Partial<DemoKey> | null;
    if (!entry || typeof entry.user !== 'string' || entry.user === '') {
      throw new Error(`DEMO_API_KEYS["${key}"].user must be a non-empty string`);
    }
    if (typeof entry.plan !== 'string' || !plans.includes(entry.plan)) {
      throw new Error(`DEMO_API_KEYS["${key}"].plan must be one of ${plans.join(', ')}`);
    }
    keys.set(key, { user: entry.user, plan: entry.plan });
  }
  return keys;
}
