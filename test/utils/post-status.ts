import { request as httpRequest, type Agent } from 'node:http';
import { bearer } from './test-controllers';

/**
 * POSTs a chat body (`messages: [hi]` plus `body`) as `user` over a keep-alive agent; resolves with the
 * status, or 0 when the connection died (a killed server), never rejects.
 */
export function postStatus(url: string, agent: Agent, user: string, body: object = {}): Promise<number> {
  return new Promise((resolve) => {
    const data = JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], ...body });
    const req = httpRequest(
      url,
      {
        method: 'POST',
        agent,
        headers: {
          authorization: bearer(user),
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(data),
        },
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
        res.on('error', () => resolve(0));
      },
    );
    req.on('error', () => resolve(0));
    req.end(data);
  });
}

/** POST /marked/<id>: a metered route whose path names the request, so its ledger row can be found. */
export const postMarked = (base: string, agent: Agent, user: string, id: string, body: object = {}) =>
  postStatus(`${base}/marked/${id}`, agent, user, body);
