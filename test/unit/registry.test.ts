import { expect } from 'chai';
import fc from 'fast-check';
import {
  BAD_CREDENTIALS_MESSAGE,
  INSECURE_MESSAGE,
  causeOf,
  isInsecureRegistry,
  logContext,
  networkFailure,
  notFoundMessage,
  parseDockerUrl,
  parseWwwAuthenticate,
  pickChallenge,
  redactUrl,
  redirectHeaders,
  tokenUrl,
  type AuthChallenge,
} from '../../plugins/grootfs/registry.js';

const HUB = 'registry-1.docker.io';
const DIGEST = `sha256:${'0123456789abcdef'.repeat(4)}`;

function fetchFailure(code: string, message: string): Error {
  return new TypeError('fetch failed', { cause: Object.assign(new Error(message), { code }) });
}

describe('registry docker:// URLs', () => {
  it('sends docker:///repo to the default registry, adding library/ on Docker Hub', () => {
    expect(parseDockerUrl('docker:///alpine', HUB)).to.deep.equal({
      registry: HUB,
      apiHost: HUB,
      repository: 'library/alpine',
      tag: 'latest',
      reference: 'latest',
    });
    expect(parseDockerUrl('docker:///library/ubuntu:22.04', 'docker.io')).to.deep.include({
      registry: 'docker.io',
      apiHost: HUB,
      repository: 'library/ubuntu',
      tag: '22.04',
      reference: '22.04',
    });
    expect(parseDockerUrl('docker:///cloudfoundry/cflinuxfs4', HUB).repository).to.equal('cloudfoundry/cflinuxfs4');
    expect(parseDockerUrl('docker:///busybox', '10.0.0.1:5000')).to.deep.include({ registry: '10.0.0.1:5000', repository: 'busybox' });
    expect(parseDockerUrl('docker:///busybox', '').registry).to.equal(HUB);
    expect(parseDockerUrl('docker://alpine', HUB).repository).to.equal('library/alpine');
  });

  it('takes docker://host[:port]/repo when the first part looks like a host, as containers/image does', () => {
    expect(parseDockerUrl('docker://127.0.0.1:5055/smoke/busybox:v1', HUB)).to.deep.equal({
      registry: '127.0.0.1:5055',
      apiHost: '127.0.0.1:5055',
      repository: 'smoke/busybox',
      tag: 'v1',
      reference: 'v1',
    });
    expect(parseDockerUrl('docker://localhost/busybox', HUB).registry).to.equal('localhost');
    expect(parseDockerUrl('docker://registry.example.com/team/app', HUB)).to.deep.include({ registry: 'registry.example.com', repository: 'team/app' });
    expect(parseDockerUrl('docker://docker.io/alpine', HUB)).to.deep.include({ apiHost: HUB, repository: 'library/alpine' });
    expect(parseDockerUrl('docker://[::1]:5000/x', HUB).registry).to.equal('[::1]:5000');
    // No dot, colon or "localhost": a Docker Hub namespace, not a host.
    expect(parseDockerUrl('docker://cloudfoundry/garden-busybox', HUB)).to.deep.include({ registry: HUB, repository: 'cloudfoundry/garden-busybox' });
  });

  it('lets a digest win over a tag', () => {
    expect(parseDockerUrl(`docker:///busybox@${DIGEST}`, HUB)).to.deep.equal({
      registry: HUB,
      apiHost: HUB,
      repository: 'library/busybox',
      digest: DIGEST,
      reference: DIGEST,
    });
    expect(parseDockerUrl(`docker://r.io:5000/busybox:1.36@${DIGEST}`, HUB)).to.deep.include({ tag: '1.36', digest: DIGEST, reference: DIGEST });
  });

  it('takes Garden\'s #tag form as the tag (issue 8)', () => {
    expect(parseDockerUrl('docker:///busybox#1.36.1', HUB)).to.deep.equal(parseDockerUrl('docker:///busybox:1.36.1', HUB));
    expect(parseDockerUrl('docker:///busybox#1.36.1', HUB)).to.deep.include({ repository: 'library/busybox', tag: '1.36.1', reference: '1.36.1' });
    expect(parseDockerUrl('docker://127.0.0.1:5055/cfgarden/x#0.0.1', HUB)).to.deep.include({ registry: '127.0.0.1:5055', repository: 'cfgarden/x', tag: '0.0.1' });
    fc.assert(
      fc.property(fc.stringMatching(/^[a-z0-9]{1,8}(\/[a-z0-9]{1,8}){0,2}$/), fc.stringMatching(/^\w[\w.-]{0,20}$/), (repo, tag) => {
        expect(parseDockerUrl(`docker:///${repo}#${tag}`, '127.0.0.1:5000')).to.deep.equal(parseDockerUrl(`docker:///${repo}:${tag}`, '127.0.0.1:5000'));
      }),
    );
  });

  it('refuses bad names, tags and digests with InvalidArgument', () => {
    const bad: [string, RegExp][] = [
      ['docker:///', /no repository/],
      ['docker://', /no repository/],
      ['docker:alpine', /expected docker:\/\//],
      ['docker:///Alpine', /must be lowercase/],
      ['docker:///a//b', /invalid repository name/],
      ['docker:///a/-b', /invalid repository name/],
      ['docker:///a..b', /invalid repository name/],
      ['docker:///a___b', /invalid repository name/],
      ['docker:///alpine:', /invalid tag ``/],
      ['docker:///busybox#', /`#` must be followed by a tag/],
      ['docker:///#1.0', /no repository/],
      ['docker:///busybox:1#2', /give the tag once/],
      [`docker:///busybox@${DIGEST}#2`, /give the tag once/],
      ['docker:///busybox#.x', /invalid tag `.x`/],
      ['docker:///busybox#a#b', /invalid tag `a#b`/],
      ['docker:///alpine:.x', /invalid tag/],
      [`docker:///alpine:${'x'.repeat(129)}`, /invalid tag/],
      ['docker:///alpine@sha256:abc', /invalid digest/],
      [`docker:///alpine@sha512:${'a'.repeat(128)}`, /only sha256/],
      ['docker://bad_host.com/x', /is not a registry host/],
      ['docker://host.com:99999/x', /is not a registry host/],
      [`docker://r.io/${'a'.repeat(260)}`, /longer than 255/],
    ];
    for (const [url, re] of bad) {
      let err: unknown;
      try {
        parseDockerUrl(url, HUB);
      } catch (e) {
        err = e;
      }
      expect(err, url).to.be.instanceOf(Error);
      expect((err as Error).message, url).to.match(re);
      expect((err as { code?: string }).code, url).to.equal('ERR_TRELLIS_INVALID_ARGUMENT');
    }
    expect(parseDockerUrl('docker:///a__b/c-d/e.f/g--h', HUB).repository).to.equal('a__b/c-d/e.f/g--h');
  });

  it('round-trips every valid reference (property)', () => {
    const alnum = fc.stringOf(fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789'), { minLength: 1, maxLength: 6 });
    const sep = fc.constantFrom('.', '_', '__', '-', '--');
    const component = fc.tuple(alnum, fc.array(fc.tuple(sep, alnum), { maxLength: 2 })).map(([a, rest]) => a + rest.map(([s, b]) => s + b).join(''));
    const repo = fc.array(component, { minLength: 2, maxLength: 3 }).map((cs) => cs.join('/'));
    const tagChars = fc.constantFrom(...'abcXYZ019_.-');
    const tag = fc.tuple(fc.constantFrom(...'aZ9_'), fc.stringOf(tagChars, { maxLength: 20 })).map(([a, b]) => a + b);
    const host = fc.constantFrom('registry.example.com', '127.0.0.1:5000', 'localhost', 'localhost:443', 'my-reg.io:8080');
    const digest = fc.hexaString({ minLength: 64, maxLength: 64 }).map((h) => `sha256:${h.toLowerCase()}`);
    fc.assert(
      fc.property(host, repo, fc.option(tag, { nil: undefined }), fc.option(digest, { nil: undefined }), (h, r, t, d) => {
        const url = `docker://${h}/${r}${t === undefined ? '' : `:${t}`}${d === undefined ? '' : `@${d}`}`;
        const ref = parseDockerUrl(url, HUB);
        expect(ref.registry).to.equal(h);
        expect(ref.repository).to.equal(r);
        expect(ref.digest).to.equal(d);
        expect(ref.reference).to.equal(d ?? t ?? 'latest');
      }),
    );
  });

  it('never throws anything but InvalidArgument on arbitrary input (property)', () => {
    fc.assert(
      fc.property(fc.string(), (s) => {
        try {
          parseDockerUrl(`docker://${s}`, HUB);
        } catch (err) {
          expect((err as { code?: string }).code).to.equal('ERR_TRELLIS_INVALID_ARGUMENT');
        }
      }),
    );
  });

  it('matches insecure registries exactly, by host[:port]', () => {
    const ref = parseDockerUrl('docker://10.0.0.1:5000/x', HUB);
    expect(isInsecureRegistry(ref, ['10.0.0.1:5000'])).to.equal(true);
    expect(isInsecureRegistry(ref, ['10.0.0.1'])).to.equal(false);
    expect(isInsecureRegistry(parseDockerUrl('docker:///x', '10.0.0.1:5000'), ['10.0.0.1:5000'])).to.equal(true);
  });
});

describe('registry authentication', () => {
  it('parses a Docker Hub bearer challenge', () => {
    const header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"';
    expect(parseWwwAuthenticate(header)).to.deep.equal([
      { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull' } },
    ]);
  });

  it('parses several challenges, unquoted values, escapes and odd spacing', () => {
    expect(parseWwwAuthenticate('Basic realm="Registry Realm", Bearer realm=https://a/t , service = "s\\"x\\\\"')).to.deep.equal([
      { scheme: 'basic', params: { realm: 'Registry Realm' } },
      { scheme: 'bearer', params: { realm: 'https://a/t', service: 's"x\\' } },
    ]);
    expect(parseWwwAuthenticate('Negotiate')).to.deep.equal([{ scheme: 'negotiate', params: {} }]);
    expect(parseWwwAuthenticate('')).to.deep.equal([]);
    expect(parseWwwAuthenticate('Bearer realm="unterminated')).to.deep.equal([{ scheme: 'bearer', params: { realm: 'unterminated' } }]);
  });

  it('round-trips generated challenges and never throws (property)', () => {
    const tokenChars = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789-_.');
    const token = fc.stringOf(tokenChars, { minLength: 1, maxLength: 10 });
    const challenge = fc.record({
      scheme: token,
      params: fc.uniqueArray(fc.tuple(token, fc.string({ maxLength: 20 })), { selector: ([k]) => k, maxLength: 4 }),
    });
    const quote = (v: string) => `"${v.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
    fc.assert(
      fc.property(fc.array(challenge, { minLength: 1, maxLength: 3 }), (cs) => {
        const header = cs.map((c) => [c.scheme, c.params.map(([k, v]) => `${k}=${quote(v)}`).join(', ')].filter((x) => x !== '').join(' ')).join(', ');
        const expected: AuthChallenge[] = cs.map((c) => ({ scheme: c.scheme, params: Object.fromEntries(c.params) }));
        expect(parseWwwAuthenticate(header)).to.deep.equal(expected);
      }),
    );
    fc.assert(fc.property(fc.string(), (s) => void parseWwwAuthenticate(s)));
  });

  it('prefers bearer and builds the token URL with service and pull scope', () => {
    const cs = parseWwwAuthenticate('Basic realm="x", Bearer realm="https://auth.example.com/token?foo=1",service="reg"');
    const bearer = pickChallenge(cs)!;
    expect(bearer.scheme).to.equal('bearer');
    expect(tokenUrl(bearer, 'repository:team/app:pull').href).to.equal(
      'https://auth.example.com/token?foo=1&service=reg&scope=repository%3Ateam%2Fapp%3Apull',
    );
    expect(pickChallenge(parseWwwAuthenticate('Basic realm="x"'))?.scheme).to.equal('basic');
    expect(pickChallenge(parseWwwAuthenticate('Negotiate'))).to.equal(undefined);
    expect(() => tokenUrl({ scheme: 'bearer', params: {} }, 's')).to.throw(/no realm/);
    expect(() => tokenUrl({ scheme: 'bearer', params: { realm: 'file:///etc/passwd' } }, 's')).to.throw(/not http/);
  });

  it('drops Authorization when a redirect leaves the origin', () => {
    const h = { accept: 'x', Authorization: 'Bearer secret' };
    const reg = new URL('https://reg.io/v2/a/blobs/sha256:x');
    expect(redirectHeaders(h, reg, new URL('https://reg.io/other'))).to.equal(h);
    expect(redirectHeaders(h, reg, new URL('https://s3.amazonaws.com/blob?sig=1'))).to.deep.equal({ accept: 'x' });
    expect(redirectHeaders(h, reg, new URL('https://reg.io:8443/blob'))).to.deep.equal({ accept: 'x' });
    expect(redirectHeaders(h, reg, new URL('http://reg.io/blob'))).to.deep.equal({ accept: 'x' });
  });
});

describe('registry errors and redaction', () => {
  it('uses grootfs texts', () => {
    expect(notFoundMessage('docker:///nope')).to.equal('docker:///nope does not exist or you do not have permissions to see it.');
    expect(BAD_CREDENTIALS_MESSAGE).to.equal('authorization failed: username and password are invalid');
    expect(INSECURE_MESSAGE).to.equal('This registry is insecure. To pull images from this registry, please use the --insecure-registry option.');
  });

  it('calls a certificate failure or a plain-HTTP server insecure, unless the registry is marked insecure', () => {
    const selfSigned = fetchFailure('DEPTH_ZERO_SELF_SIGNED_CERT', 'self-signed certificate');
    const err = networkFailure('r.io:5000', selfSigned, false);
    expect(err.message).to.equal(INSECURE_MESSAGE);
    expect(err.code).to.equal('ERR_TRELLIS_REGISTRY_INSECURE');
    expect(err.hint).to.equal('registry r.io:5000: self-signed certificate');
    const plain = fetchFailure('ERR_SSL_WRONG_VERSION_NUMBER', '80EC:error:0A00010B:SSL routines::wrong version number\n');
    expect(networkFailure('r.io:5000', plain, false).message).to.equal(INSECURE_MESSAGE);
    expect(networkFailure('r.io:5000', selfSigned, true).code).to.equal('ERR_TRELLIS_REGISTRY_UNREACHABLE');
  });

  it('names the registry in one line when it cannot be reached', () => {
    const refused = fetchFailure('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:5056');
    expect(networkFailure('127.0.0.1:5056', refused, false).message).to.equal('cannot reach registry 127.0.0.1:5056: connect ECONNREFUSED 127.0.0.1:5056');
    const tls = fetchFailure('ERR_SSL_WRONG_VERSION_NUMBER', 'openssl noise\nmore noise');
    expect(networkFailure('h:1', refused, true, tls).message).to.equal(
      'cannot reach registry h:1: https: TLS handshake failed: the server does not speak HTTPS; http: connect ECONNREFUSED 127.0.0.1:5056',
    );
    const timeout = fetchFailure('UND_ERR_CONNECT_TIMEOUT', 'Connect Timeout Error');
    expect(networkFailure('h:1', timeout, false).message).to.equal('cannot reach registry h:1: connection timed out after 30 s');
    const both = new TypeError('fetch failed', {
      cause: new AggregateError([Object.assign(new Error('connect ECONNREFUSED ::1:5000'), { code: 'ECONNREFUSED' })], ''),
    });
    expect(causeOf(both)).to.deep.equal({ code: 'ECONNREFUSED', message: 'connect ECONNREFUSED ::1:5000' });
    expect(networkFailure('h', new TypeError('fetch failed', { cause: new Error('bad port') }), false).message).to.match(/bad port/);
  });

  it('logs the registry, repository, reference and whether credentials were given — never the password', () => {
    const ref = parseDockerUrl('docker://r.io/team/app:v1', HUB);
    const ctx = logContext(ref, { username: 'alice', password: 'hunter2' });
    expect(ctx).to.deep.equal({ registry: 'r.io', repository: 'team/app', reference: 'v1', credentials: true });
    expect(JSON.stringify(ctx)).not.to.include('hunter2');
    expect(JSON.stringify(ctx)).not.to.include('alice');
    expect(logContext(ref, {}).credentials).to.equal(false);
    expect(logContext(ref, { username: '' }).credentials).to.equal(false);
  });

  it('keeps credentials in a URL out of errors and names', () => {
    expect(redactUrl('docker://alice:hunter2@r.io/team/app')).to.equal('docker://r.io/team/app');
    expect(redactUrl(`docker:///busybox@${DIGEST}`)).to.equal(`docker:///busybox@${DIGEST}`);
    let message = '';
    try {
      parseDockerUrl('docker://alice:hunter2@r.io/team/app', HUB);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).to.match(/credentials cannot be given in the URL/);
    expect(message).not.to.include('hunter2');
    expect(redactUrl('docker://alice:pa/ss@r.io/x')).to.equal('docker://r.io/x');
    expect(redactUrl(`docker://alice:p@ss@r.io/app@${DIGEST}`)).to.equal(`docker://r.io/app@${DIGEST}`);
    expect(redactUrl(`docker://busybox@${DIGEST}`)).to.equal(`docker://busybox@${DIGEST}`);
    // review: credentials before a bare host (no path) were kept
    expect(redactUrl('docker://user:s3cret@registry.example.com')).to.equal('docker://registry.example.com');
    expect(redactUrl('docker://user:s3cret@localhost:5000')).to.equal('docker://localhost:5000');
  });

  it('never lets a password in the URL reach the error (property)', () => {
    const password = fc.stringOf(fc.constantFrom(...'ABCXYZ!$%&*/@:?#'), { minLength: 4, maxLength: 16 });
    fc.assert(
      fc.property(password, (pw) => {
        const url = `docker://alice:${pw}@r.io/team/app:v1`;
        expect(redactUrl(url)).to.equal('docker://r.io/team/app:v1');
        try {
          parseDockerUrl(url, HUB);
          expect.fail('parsed a URL with credentials');
        } catch (err) {
          expect((err as Error).message).not.to.include(pw);
        }
      }),
    );
  });
});
