// Errors to HTTP (src/api/errors.ts, spec §2).

import { expect } from 'chai';
import fc from 'fast-check';
import { toHttpError } from '../../src/api/errors.js';
import {
  AlreadyExists, ContainerNotFound, ExecutableNotFound, ExternalFailure, InvalidArgument, ProcessNotFound, ServiceUnavailable,
  TrellisError,
} from '../../src/errors.js';

const KEYS = ['Type', 'Message', 'Handle', 'ProcessID', 'Binary'];

describe('toHttpError', () => {
  it('ContainerNotFound → 404 carrying the Handle', () => {
    expect(toHttpError(new ContainerNotFound('nosuch'))).to.deep.equal({
      status: 404,
      body: '{"Type":"ContainerNotFoundError","Message":"unknown handle: nosuch","Handle":"nosuch","ProcessID":"","Binary":""}\n',
    });
  });

  it('ProcessNotFound → 404 carrying the ProcessID', () => {
    expect(toHttpError(new ProcessNotFound('nope'))).to.deep.equal({
      status: 404,
      body: '{"Type":"ProcessNotFoundError","Message":"unknown process: nope","Handle":"","ProcessID":"nope","Binary":""}\n',
    });
  });

  it('ExecutableNotFound → 500 ExecutableNotFoundError', () => {
    expect(toHttpError(new ExecutableNotFound('fork/exec /no/such/binary: no such file or directory'))).to.deep.equal({
      status: 500,
      body: '{"Type":"ExecutableNotFoundError","Message":"fork/exec /no/such/binary: no such file or directory","Handle":"","ProcessID":"","Binary":""}\n',
    });
  });

  it('AlreadyExists → 500 with an empty Type', () => {
    expect(toHttpError(new AlreadyExists("Handle 'c1' already in use"))).to.deep.equal({
      status: 500,
      body: '{"Type":"","Message":"Handle \'c1\' already in use","Handle":"","ProcessID":"","Binary":""}\n',
    });
  });

  it('ServiceUnavailable → 500, not 503', () => {
    const r = toHttpError(new ServiceUnavailable('backend busy'));
    expect(r.status).to.equal(500);
    expect(JSON.parse(r.body).Type).to.equal('ServiceUnavailableError');
  });

  it('a plain Error, a string and a non-error → 500 with an empty Type', () => {
    expect(toHttpError(new Error('EOF'))).to.deep.equal({
      status: 500, body: '{"Type":"","Message":"EOF","Handle":"","ProcessID":"","Binary":""}\n',
    });
    expect(toHttpError('boom').body).to.equal('{"Type":"","Message":"boom","Handle":"","ProcessID":"","Binary":""}\n');
    expect(toHttpError(undefined).status).to.equal(500);
  });

  it('generic Trellis errors → 500 with an empty Type', () => {
    for (const e of [new InvalidArgument('bad'), new ExternalFailure('runc', 'runc create: x'), new TrellisError('X', 'y')]) {
      const r = toHttpError(e);
      expect(r.status).to.equal(500);
      expect(JSON.parse(r.body).Type).to.equal('');
    }
  });

  it('always sends the five keys in order, Binary empty, one line of JSON', () => {
    const anyErr = fc.oneof(
      fc.fullUnicodeString().map((s) => new ContainerNotFound(s) as unknown),
      fc.fullUnicodeString().map((s) => new ProcessNotFound(s)),
      fc.fullUnicodeString().map((s) => new ExecutableNotFound(s)),
      fc.fullUnicodeString().map((s) => new AlreadyExists(s)),
      fc.fullUnicodeString().map((s) => new Error(s)),
      fc.fullUnicodeString(),
    );
    fc.assert(
      fc.property(anyErr, (e) => {
        const { status, body } = toHttpError(e);
        expect(status).to.be.oneOf([404, 500]);
        expect(body.endsWith('\n')).to.equal(true);
        expect(body.indexOf('\n')).to.equal(body.length - 1);
        const o = JSON.parse(body) as Record<string, string>;
        expect(Object.keys(o)).to.deep.equal(KEYS);
        expect(o.Binary).to.equal('');
        if (status === 404) expect(o.Type).to.be.oneOf(['ContainerNotFoundError', 'ProcessNotFoundError']);
      }),
    );
  });
});
