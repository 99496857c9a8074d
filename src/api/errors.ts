// The one place errors become HTTP: Garden's error JSON, 404 for the two
// not-found types and 500 for everything else (spec/garden-api.md §2).
import { TrellisError, errorMessage } from '../errors.js';
import { encodeError } from './codec.js';

export interface HttpError {
  status: number;
  body: string;
}

export function toHttpError(err: unknown): HttpError {
  if (err instanceof TrellisError) {
    const status = err.gardenType === 'ContainerNotFoundError' || err.gardenType === 'ProcessNotFoundError' ? 404 : 500;
    return { status, body: encodeError(err) };
  }
  return { status: 500, body: encodeError({ gardenType: '', message: errorMessage(err), handle: '', processId: '' }) };
}

export const STATUS_TEXT: Record<number, string> = {
  200: 'OK', 201: 'Created', 400: 'Bad Request', 404: 'Not Found', 405: 'Method Not Allowed', 413: 'Payload Too Large',
  431: 'Request Header Fields Too Large', 500: 'Internal Server Error',
};
