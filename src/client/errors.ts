// Garden's error object → the project's typed errors, as the Go client rebuilds
// them (spec §2.2): the not-found kinds from Handle/ProcessID, not Message.

import {
  ContainerNotFound, ExecutableNotFound, ProcessNotFound, ServiceUnavailable, TrellisError,
} from '../errors.js';
import type { ErrorObject } from './types.js';

/** The backend is broken for good (Garden's UnrecoverableError). */
export class Unrecoverable extends TrellisError {
  override readonly gardenType = 'UnrecoverableError' as const;
  constructor(message: string) {
    super('ERR_TRELLIS_UNRECOVERABLE', message);
  }
}

/** An error the server reported with an empty or unknown Type: only its message is kept. */
export class GardenError extends TrellisError {
  constructor(message: string) {
    super('ERR_TRELLIS_GARDEN', message);
  }
}

/** The reply could not be understood at all (not JSON, not HTTP, cut short). */
export class BadResponse extends TrellisError {
  constructor(message: string) {
    super('ERR_TRELLIS_BAD_RESPONSE', message);
  }
}

/** Dialing or talking to the server failed below HTTP. */
export class ConnectionFailed extends TrellisError {
  constructor(message: string, cause?: unknown) {
    super('ERR_TRELLIS_CONNECTION', message, { cause });
  }
}

export function errorFromWire(o: ErrorObject): TrellisError {
  switch (o.Type) {
    case 'ContainerNotFoundError':
      return new ContainerNotFound(o.Handle);
    case 'ProcessNotFoundError':
      return new ProcessNotFound(o.ProcessID);
    case 'ExecutableNotFoundError':
      return new ExecutableNotFound(o.Message);
    case 'ServiceUnavailableError':
      return new ServiceUnavailable(o.Message);
    case 'UnrecoverableError':
      return new Unrecoverable(o.Message);
    default:
      return new GardenError(o.Message);
  }
}
