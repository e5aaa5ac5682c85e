/** The request's path without its query string (Express and Fastify requests alike). */
export function pathOf(request: { originalUrl?: string; url?: string }): string {
  const url = request.originalUrl ?? request.url ?? '';
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}
