import type { ValueTransformer } from 'typeorm';

/** PostgreSQL returns `bigint` as a string; every amount here fits a JS number (< 2^53). */
export const bigintAsNumber: ValueTransformer = {
  to: (value: number | null | undefined) => value,
  from: (value: string | number | null) => (value === null ? null : Number(value)),
};
