/** Marks a stored user id that was encoded because PostgreSQL text cannot hold it as is. */
const ENCODED = '\u0001b64:';

/**
 * The `user_id` stored in the shared database. PostgreSQL text cannot contain NUL, so an id with NUL
 * (or one that looks encoded) is stored as a marked base64url form; every other id is stored verbatim.
 * The mapping is one-to-one: distinct ids never share rows.
 */
export function sharedUserId(userId: string): string {
  if (!userId.includes('\u0000') && !userId.startsWith(ENCODED)) return userId;
  return ENCODED + Buffer.from(userId, 'utf8').toString('base64url');
}

/** The app's user id of a stored `user_id` (the inverse of `sharedUserId`). */
export function appUserId(stored: string): string {
  return stored.startsWith(ENCODED)
    ? Buffer.from(stored.slice(ENCODED.length), 'base64url').toString('utf8')
    : stored;
}
