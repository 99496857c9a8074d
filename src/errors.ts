// The closed error vocabulary. Every failure that crosses a boundary (HTTP, CLI,
// plugin) is one of these; src/api/errors.ts maps them to Garden's wire shape.

export type GardenErrorType =
  | 'ContainerNotFoundError'
  | 'ProcessNotFoundError'
  | 'ExecutableNotFoundError'
  | 'ServiceUnavailableError'
  | 'UnrecoverableError'
  | '';

export class TrellisError extends Error {
  /** Garden's `Type` on the wire; '' for the generic kind. */
  readonly gardenType: GardenErrorType = '';
  /** A stable code a person or a script can match on. */
  readonly code: string;
  /** What to do about it, when there is something to do. */
  readonly hint?: string;
  handle = '';
  processId = '';

  constructor(code: string, message: string, opts: { hint?: string; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.hint = opts.hint;
  }
}

export class ContainerNotFound extends TrellisError {
  override readonly gardenType = 'ContainerNotFoundError' as const;
  constructor(handle: string) {
    super('ERR_TRELLIS_CONTAINER_NOT_FOUND', `unknown handle: ${handle}`);
    this.handle = handle;
  }
}

export class ProcessNotFound extends TrellisError {
  override readonly gardenType = 'ProcessNotFoundError' as const;
  constructor(processId: string) {
    super('ERR_TRELLIS_PROCESS_NOT_FOUND', `unknown process: ${processId}`);
    this.processId = processId;
  }
}

export class ExecutableNotFound extends TrellisError {
  override readonly gardenType = 'ExecutableNotFoundError' as const;
  constructor(message: string) {
    super('ERR_TRELLIS_EXECUTABLE_NOT_FOUND', message);
  }
}

export class ServiceUnavailable extends TrellisError {
  override readonly gardenType = 'ServiceUnavailableError' as const;
  constructor(message: string) {
    super('ERR_TRELLIS_UNAVAILABLE', message);
  }
}

/** Bad input from a client: a malformed body, a forbidden handle, a bad flag. */
export class InvalidArgument extends TrellisError {
  constructor(message: string, hint?: string) {
    super('ERR_TRELLIS_INVALID_ARGUMENT', message, { hint });
  }
}

export class AlreadyExists extends TrellisError {
  constructor(message: string) {
    super('ERR_TRELLIS_ALREADY_EXISTS', message);
  }
}

/** The host is not prepared for what was asked (missing subuid entry, binary, setup). */
export class FailedPrecondition extends TrellisError {
  constructor(code: string, message: string, hint?: string) {
    super(code, message, { hint });
  }
}

/** The caller may not do this: another user on a loopback connection, for one. */
export class PermissionDenied extends TrellisError {
  constructor(message: string) {
    super('ERR_TRELLIS_PERMISSION_DENIED', message);
  }
}

export class NotImplemented extends TrellisError {
  constructor(message: string) {
    super('ERR_TRELLIS_NOT_IMPLEMENTED', message);
  }
}

/** An external binary (runc, conmon, a plugin) failed; carries its last log line. */
export class ExternalFailure extends TrellisError {
  readonly binary: string;
  constructor(binary: string, message: string, cause?: unknown) {
    super('ERR_TRELLIS_EXTERNAL', message, { cause });
    this.binary = binary;
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
