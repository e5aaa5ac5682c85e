import { createHash } from 'node:crypto';

/** Longest user id accepted (UTF-16 code units); longer ids are refused rather than truncated. */
export const MAX_USER_ID_LENGTH = 1024;

const READABLE_PREFIX_LENGTH = 24;

/**
 * The database file name of a user: a short sanitized prefix for people reading `ls`, then the SHA-256
 * of the exact id (UTF-8). Only `[a-z0-9-]` and `.sqlite` appear, so no id can leave `dataDir`; distinct
 * ids differ in the hash (including ids that differ only in case or Unicode normalisation); the same id
 * always maps to the same name.
 */
export function userFileName(userId: string): string {
  const hash = createHash('sha256').update(userId, 'utf8').digest('hex');
  const prefix = userId
    .normalize('NFKD')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, READABLE_PREFIX_LENGTH)
    .replace(/-+$/, '');
  return `${prefix ? `${prefix}--` : ''}${hash}.sqlite`;
}
