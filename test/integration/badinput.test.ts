// Bad input over the wire: each answer is Garden's exact error object
// {Type, Message, Handle, ProcessID, Binary} with the right status, nothing is
// left behind on the host, and the server keeps answering.

import { expect } from 'chai';
import { join } from 'node:path';
import {
  cleanupServer, dumpLogsIfFailed, entries, gardenError, leftovers, monitorsMentioning, rawExchange, rawRequest,
  type RawResponse, type Server, spec, startServer, STORE,
} from './harness.js';

const ONE_MIB = 1024 * 1024;

describe('bad input (integration)', function () {
  let server: Server;
  let before_: { depot: string[]; images: string[]; handles: string[] };

  before(async function () {
    server = await startServer();
  });

  after(async function () {
    await cleanupServer(server);
  });

  beforeEach(async function () {
    before_ = await snapshot();
  });

  afterEach(function () {
    dumpLogsIfFailed(this, server);
  });

  async function snapshot(): Promise<{ depot: string[]; images: string[]; handles: string[] }> {
    return {
      depot: await entries(server.depot),
      images: await entries(join(STORE, 'images')),
      handles: (await server.client.list()).sort(),
    };
  }

  /** Nothing new in the depot, the image store or the list, and the server still answers ping. */
  async function unchangedAndAlive(): Promise<void> {
    await server.client.ping();
    const now = await snapshot();
    expect(now.depot, 'depot entries').to.deep.equal(before_.depot);
    expect(now.images, 'image store entries').to.deep.equal(before_.images);
    expect(now.handles, 'listed handles').to.deep.equal(before_.handles);
  }

  const json = (r: RawResponse | null): string => (r === null ? '(connection closed without a response)' : `${r.status} ${r.text}`);

  function expectError(r: RawResponse | null, status: number, expected: Partial<Record<string, string>>): Record<string, string> {
    const e = gardenError(r);
    expect(r!.status, json(r)).to.equal(status);
    expect(r!.headers.get('content-type')?.[0], 'Content-Type').to.match(/^application\/json/);
    expect(e.Binary, 'Binary').to.equal('');
    for (const [k, v] of Object.entries(expected)) expect(e[k], `${k} in ${r!.text}`).to.equal(v);
    return e;
  }

  describe('unknown handle', function () {
    const cases: Array<[string, string, string?]> = [
      ['GET', '/containers/nosuch/info'],
      ['GET', '/containers/nosuch/properties'],
      ['GET', '/containers/nosuch/properties/k'],
      ['PUT', '/containers/nosuch/properties/k', '{"value":"v"}\n'],
      ['PUT', '/containers/nosuch/stop', '{"kill":false}\n'],
      ['PUT', '/containers/nosuch/grace_time', '1000000000\n'],
      ['GET', '/containers/nosuch/limits/memory'],
      ['DELETE', '/containers/nosuch'],
      ['POST', '/containers/nosuch/processes', '{"path":"true","rlimits":{},"image":{}}\n'],
      ['GET', '/containers/nosuch/processes/p1'],
    ];
    for (const [method, path, body] of cases) {
      it(`${method} ${path} → 404 ContainerNotFoundError with Handle`, async function () {
        const r = await rawRequest(server.socketPath, method, path, body);
        expectError(r, 404, {
          Type: 'ContainerNotFoundError', Message: 'unknown handle: nosuch', Handle: 'nosuch', ProcessID: '',
        });
        await unchangedAndAlive();
      });
    }

    it('escaped traversal in the handle segment is just an unknown handle', async function () {
      for (const path of ['/containers/..%2F..%2Fetc/info', '/containers/%2E%2E/info', '/containers/a%2Fb/properties']) {
        const r = await rawRequest(server.socketPath, 'GET', path);
        expect(r?.status, `${path}: ${json(r)}`).to.equal(404);
        expect(gardenError(r).Type, path).to.equal('ContainerNotFoundError');
      }
      const del = await rawRequest(server.socketPath, 'DELETE', '/containers/..%2F..%2Fdepot');
      expect(del?.status, json(del)).to.equal(404);
      await unchangedAndAlive();
    });
  });

  describe('on an existing container', function () {
    let h: string;

    before(async function () {
      h = await server.client.create(spec({ handle: 'bad-existing' }));
    });

    after(async function () {
      await server.client.destroy(h).catch(() => {});
    });

    it('unknown process → 404 ProcessNotFoundError with ProcessID', async function () {
      const r = await rawRequest(server.socketPath, 'GET', `/containers/${h}/processes/nope`);
      expectError(r, 404, { Type: 'ProcessNotFoundError', Message: 'unknown process: nope', Handle: '', ProcessID: 'nope' });
      await unchangedAndAlive();
    });

    it('missing executable → 500 ExecutableNotFoundError, fully framed', async function () {
      const r = await rawRequest(server.socketPath, 'POST', `/containers/${h}/processes`, '{"path":"/no/such/binary","rlimits":{},"image":{}}\n');
      const e = expectError(r, 500, { Type: 'ExecutableNotFoundError', Handle: '', ProcessID: '' });
      expect(e.Message).to.not.equal('');
      expect(r!.headers.get('content-length'), 'Content-Length framing').to.not.equal(undefined);
      await unchangedAndAlive();
    });

    it('missing property → 500 Type "" "property does not exist: k"', async function () {
      const r = await rawRequest(server.socketPath, 'GET', `/containers/${h}/properties/k`);
      expectError(r, 500, { Type: '', Message: 'property does not exist: k', Handle: '', ProcessID: '' });
    });

    it('stop with an empty body → 500 "EOF"', async function () {
      const r = await rawRequest(server.socketPath, 'PUT', `/containers/${h}/stop`, '');
      expectError(r, 500, { Type: '', Message: 'EOF', Handle: '', ProcessID: '' });
      expect((await server.client.info(h)).State).to.equal('active');
    });

    it('malformed JSON on a container route → 500 Type ""', async function () {
      const r = await rawRequest(server.socketPath, 'PUT', `/containers/${h}/properties/k`, '{"value": ');
      const e = expectError(r, 500, { Type: '', Handle: '', ProcessID: '' });
      expect(e.Message).to.not.equal('');
      const run = await rawRequest(server.socketPath, 'POST', `/containers/${h}/processes`, '{"path": [1,');
      expect(gardenError(run).Type).to.equal('');
      expect(run!.status).to.equal(500);
      await unchangedAndAlive();
    });

    it('a duplicate handle → 500 "Handle \'<h>\' already in use"; the first container still works', async function () {
      const body = '{"handle":"bad-existing","image":{},"limits":{"bandwidth_limits":{},"cpu_limits":{},"disk_limits":{},"memory_limits":{},"pid_limits":{}}}\n';
      const r = await rawRequest(server.socketPath, 'POST', '/containers', body);
      expectError(r, 500, { Type: '', Message: "Handle 'bad-existing' already in use", Handle: '', ProcessID: '' });
      await unchangedAndAlive();
      expect((await server.client.info(h)).State).to.equal('active');
      const p = await server.client.run(h, { path: 'true' }, {});
      expect(await p.wait()).to.equal(0);
    });

    it('a property value over the body cap → error, server keeps working', async function () {
      const big = `{"value":"${'x'.repeat(ONE_MIB + 10)}"}\n`;
      const r = await rawRequest(server.socketPath, 'PUT', `/containers/${h}/properties/big`, big);
      expect(r, 'a response, not a dropped connection').to.not.equal(null);
      expect(r!.status, json(r)).to.be.within(400, 599);
      gardenError(r);
      await unchangedAndAlive();
      expect(await server.client.properties(h)).to.not.have.property('big');
    });
  });

  it('malformed JSON on create → 500 Type "" and nothing created', async function () {
    for (const body of ['{"handle": ', 'not json at all\n', '[1,2,3]\n', '{"handle": 42}\n']) {
      const r = await rawRequest(server.socketPath, 'POST', '/containers', body);
      const e = expectError(r, 500, { Type: '', Handle: '', ProcessID: '' });
      expect(e.Message, `message for ${JSON.stringify(body)}`).to.not.equal('');
    }
    await unchangedAndAlive();
  });

  it('create with an empty body → 500 "EOF"', async function () {
    const r = await rawRequest(server.socketPath, 'POST', '/containers', '');
    expectError(r, 500, { Type: '', Message: 'EOF', Handle: '', ProcessID: '' });
    await unchangedAndAlive();
  });

  for (const handle of ['a/b', '..', '../escape', 'x/../y', '.']) {
    it(`handle ${JSON.stringify(handle)} is refused with a clear message, nothing left behind`, async function () {
      const r = await rawRequest(server.socketPath, 'POST', '/containers', `{"handle":${JSON.stringify(handle)},"image":{},"limits":{}}\n`);
      const e = expectError(r, 500, { Type: '', Handle: '', ProcessID: '' });
      expect(e.Message, 'names the handle').to.include(handle);
      expect(e.Message.toLowerCase(), 'says what is wrong').to.match(/handle/);
      await unchangedAndAlive();
      expect(await monitorsMentioning(`${server.depot}/${handle}`)).to.deep.equal([]);
    });
  }

  // issue #12: a handle Garden clients cannot put back into a URL path is refused at create.
  for (const handle of ['a+b', 'x y', '100%', 'a?b', 'a#b', 'tab\there', 'bell\u0007']) {
    it(`issue #12: handle ${JSON.stringify(handle)} is refused at create with a clear Garden error, nothing left behind`, async function () {
      const r = await rawRequest(server.socketPath, 'POST', '/containers', `{"handle":${JSON.stringify(handle)},"image":{},"limits":{}}\n`);
      const e = expectError(r, 500, { Type: '', Handle: '', ProcessID: '' });
      expect(e.Message, 'names the handle').to.include(JSON.stringify(handle));
      expect(e.Message, 'says why').to.match(/^invalid handle .*must not contain .*Garden clients could not address/);
      await unchangedAndAlive();
      // And through the client library, as a Go client would see it.
      let err: unknown;
      await server.client.create(spec({ handle })).catch((x: unknown) => { err = x; });
      expect(String(err)).to.match(/invalid handle/);
      await unchangedAndAlive();
    });
  }

  for (const field of ['image', 'rootfs'] as const) {
    it(`a ${field} that does not exist → 500 naming it, nothing left behind`, async function () {
      const handle = `bad-rootfs-${field}`;
      const s = field === 'image' ? spec({ handle, image: { uri: '/no/such/rootfs' } }) : spec({ handle, rootfs: '/no/such/rootfs' });
      const err = await server.client.create(s).then(() => null, (e: unknown) => e);
      expect(err, 'create fails').to.be.instanceOf(Error);
      expect((err as Error).message).to.include('/no/such/rootfs');
      const body = field === 'image'
        ? `{"handle":"${handle}","image":{"uri":"/no/such/rootfs"},"limits":{}}\n`
        : `{"handle":"${handle}","rootfs":"/no/such/rootfs","image":{},"limits":{}}\n`;
      const r = await rawRequest(server.socketPath, 'POST', '/containers', body);
      expectError(r, 500, { Type: '', Handle: '', ProcessID: '' });
      await unchangedAndAlive();
      expect(await leftovers(handle, { depot: server.depot })).to.deep.equal([]);
    });
  }

  it('a create body over the 1 MiB cap → error, nothing created, server keeps working', async function () {
    const body = `{"handle":"bad-huge","properties":{"k":"${'y'.repeat(ONE_MIB + 100)}"},"image":{},"limits":{}}\n`;
    const r = await rawRequest(server.socketPath, 'POST', '/containers', body);
    expect(r, 'a response, not a dropped connection').to.not.equal(null);
    expect(r!.status, json(r)).to.be.within(400, 599);
    gardenError(r);
    await unchangedAndAlive();
    expect(await leftovers('bad-huge', { depot: server.depot })).to.deep.equal([]);
  });

  it('a body just under the cap is accepted', async function () {
    const value = 'z'.repeat(ONE_MIB - 4096);
    const h = await server.client.create(spec({ handle: 'bad-nearcap', properties: { k: value } }));
    expect((await server.client.property(h, 'k')).length).to.equal(value.length);
    await server.client.destroy(h);
    expect(await leftovers(h, { depot: server.depot })).to.deep.equal([]);
  });

  it('unknown route → 404 "404 page not found"; wrong method → 405 with Allow', async function () {
    const r = await rawRequest(server.socketPath, 'GET', '/nope');
    expect(r?.status).to.equal(404);
    expect(r?.text).to.equal('404 page not found\n');
    const m = await rawRequest(server.socketPath, 'POST', '/ping', '');
    expect(m?.status).to.equal(405);
    expect(m?.headers.get('allow')?.[0], 'Allow header').to.match(/GET/);
    await unchangedAndAlive();
  });

  it('garbage instead of HTTP, a truncated head, an oversized head: the server keeps answering', async function () {
    await rawExchange(server.socketPath, 'THIS IS NOT HTTP\r\n\r\n', 5000).catch(() => null);
    await rawExchange(server.socketPath, Buffer.from([0, 1, 2, 255, 254, 13, 10, 13, 10]), 5000).catch(() => null);
    // a head that never ends, then the client goes away
    await new Promise<void>((resolve) => {
      void rawExchange(server.socketPath, 'GET /ping HTTP/1.1\r\nHost: api\r\nX-Long: ' + 'a'.repeat(2 * ONE_MIB), 3000)
        .catch(() => null)
        .then(() => resolve());
    });
    await rawExchange(server.socketPath, 'POST /containers HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"han', 1500).catch(() => null);
    await unchangedAndAlive();
    const r = await rawRequest(server.socketPath, 'GET', '/ping');
    expect(r?.text).to.equal('{}\n');
  });
});
