/** Collects the text of the prompt-like fields of a request body, across provider shapes. */
export function requestText(body: unknown): string {
  if (!isObject(body)) return '';
  const parts: string[] = [];
  collect(body.prompt, parts);
  collect(body.input, parts);
  collect(body.system, parts);
  collect(body.instructions, parts);
  if (Array.isArray(body.messages)) for (const m of body.messages) if (isObject(m)) collect(m.content, parts);
  if (Array.isArray(body.contents)) for (const c of body.contents) if (isObject(c)) collect(c.parts, parts);
  if (isObject(body.systemInstruction)) collect(body.systemInstruction.parts, parts);
  return parts.join('\n');
}

/** Text of a string, an array of strings, or content parts (`{ text }`, `{ content }`). */
export function collect(value: unknown, out: string[], depth = 0): void {
  if (depth > 4 || value == null) return;
  if (typeof value === 'string') out.push(value);
  else if (Array.isArray(value)) for (const v of value) collect(v, out, depth + 1);
  else if (isObject(value)) {
    if (typeof value.text === 'string') out.push(value.text);
    else if (value.content !== undefined) collect(value.content, out, depth + 1);
  }
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A non-negative safe integer, or undefined for anything else (negative, NaN, strings, huge). */
export function count(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : undefined;
}
