// How the pod-facing listeners answer: a body with its length, and refusals, whose status comes
// from the error catalogue (../api/errors.ts). The container listener refuses in JSON
// (`{code, message}`), the IMDS listener in plain text as IMDS itself does.
import type { ServerResponse } from "node:http";
import { httpStatus, type ErrorCode } from "../api/errors.ts";

export const TEXT = "text/plain";
export const JSON_TYPE = "application/json";

/** IMDS's own texts for its refusals. */
export const IMDS_TEXT = {
  notFound: "Not Found\n",
  tooMany: "Too Many Requests\n",
  unauthorized: "Unauthorized\n",
  methodNotAllowed: "Method Not Allowed\n",
  badGateway: "Bad Gateway\n",
  badRequest: "Bad Request\n",
  unavailable: "Service Unavailable\n",
} as const;

export function send(res: ServerResponse, status: number, body: Buffer | string, type: string): void {
  res.writeHead(status, {
    "content-type": type,
    "content-length": typeof body === "string" ? Buffer.byteLength(body) : body.length,
    server: "keycutter",
  });
  res.end(body);
}

/** A refusal: `{code, message}` JSON on the container listener, the message as text on IMDS. */
export function sendRefusal(res: ServerResponse, code: ErrorCode, message: string, json: boolean): number {
  const status = httpStatus(code);
  if (json) send(res, status, JSON.stringify({ code, message }), JSON_TYPE);
  else send(res, status, message + "\n", TEXT);
  return status;
}

/** An IMDS refusal with the plain text IMDS itself answers with. */
export function sendImdsText(res: ServerResponse, code: ErrorCode, text: string): number {
  const status = httpStatus(code);
  send(res, status, text, TEXT);
  return status;
}
