import type { Plan } from '@app/usage-monitoring';

/** The old system's monthly tiers. AI text calls are gemini + openai + anthropic + mistral together. */
export const DEMO_PLANS: Plan[] = [
  {
    name: 'free',
    limits: [
      { metric: 'calls', scope: 'ai_text', period: 'month', max: 50 },
      { metric: 'calls', scope: 'tavily', period: 'month', max: 10 },
      { metric: 'calls', scope: 'serper', period: 'month', max: 10 },
      { metric: 'cost', scope: '*', period: 'month', max: 2 },
    ],
  },
  {
    name: 'basic',
    limits: [
      { metric: 'calls', scope: 'ai_text', period: 'month', max: 500 },
      { metric: 'calls', scope: 'tavily', period: 'month', max: 200 },
      { metric: 'calls', scope: 'serper', period: 'month', max: 200 },
      { metric: 'cost', scope: '*', period: 'month', max: 25 },
    ],
  },
  {
    name: 'pro',
    limits: [
      { metric: 'calls', scope: 'ai_text', period: 'month', max: 3000 },
      { metric: 'calls', scope: 'tavily', period: 'month', max: 1000 },
      { metric: 'calls', scope: 'serper', period: 'month', max: 1000 },
      { metric: 'cost', scope: '*', period: 'month', max: 100 },
    ],
  },
  { name: 'enterprise', limits: [] },
];
