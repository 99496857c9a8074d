// Resolving a process user against the container's passwd and group (src/gardener/users.ts).

import { expect } from 'chai';
import fc from 'fast-check';
import { resolveUser } from '../../src/gardener/users.js';
import { InvalidArgument } from '../../src/errors.js';

const PASSWD = [
  'root:x:0:0:root:/root:/bin/sh',
  'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
  '# a comment:x:5:5::/:/bin/sh',
  'vcap:x:1000:1001:vcap user:/home/vcap:/bin/bash',
  'nohome:x:2000:2000:::/bin/sh',
  'broken:x:abc:1::/:/bin/sh',
  '',
].join('\n');

const GROUP = ['root:x:0:', 'staff:x:50:vcap', 'vcap:x:1001:', 'docker:x:999:vcap,root', ''].join('\n');

describe('resolveUser', () => {
  it('"" is root', () => {
    expect(resolveUser('', PASSWD, GROUP)).to.deep.equal({ uid: 0, gid: 0, name: 'root', home: '/root', groups: [999] });
  });

  it('root resolves without a passwd file', () => {
    expect(resolveUser('', undefined, undefined)).to.deep.equal({ uid: 0, gid: 0, name: 'root', home: '/root', groups: [] });
    expect(resolveUser('root', undefined, undefined)).to.deep.equal({ uid: 0, gid: 0, name: 'root', home: '/root', groups: [] });
    expect(resolveUser('root', 'vcap:x:1000:1000::/home/vcap:/bin/sh\n', undefined)).to.deep.equal({ uid: 0, gid: 0, name: 'root', home: '/root', groups: [] });
  });

  it('looks a name up in passwd', () => {
    expect(resolveUser('vcap', PASSWD, GROUP)).to.deep.equal({ uid: 1000, gid: 1001, name: 'vcap', home: '/home/vcap', groups: [50, 999] });
    expect(resolveUser('daemon', PASSWD, GROUP)).to.deep.equal({ uid: 1, gid: 1, name: 'daemon', home: '/usr/sbin', groups: [] });
  });

  it('gives / as home when the entry has none', () => {
    expect(resolveUser('nohome', PASSWD, GROUP).home).to.equal('/');
  });

  it('takes a numeric user as a uid, with its passwd entry when there is one', () => {
    expect(resolveUser('1000', PASSWD, GROUP)).to.deep.equal({ uid: 1000, gid: 1001, name: 'vcap', home: '/home/vcap', groups: [50, 999] });
    expect(resolveUser('0', PASSWD, GROUP)).to.deep.equal({ uid: 0, gid: 0, name: 'root', home: '/root', groups: [999] });
  });

  it('takes uid:gid literally', () => {
    expect(resolveUser('1000:50', PASSWD, GROUP)).to.deep.equal({ uid: 1000, gid: 50, name: 'vcap', home: '/home/vcap', groups: [50, 999] });
    const u = resolveUser('4242:4343', PASSWD, GROUP);
    expect([u.uid, u.gid, u.home]).to.deep.equal([4242, 4343, '/']);
  });

  it('resolves a group name', () => {
    expect(resolveUser('vcap:staff', PASSWD, GROUP)).to.deep.equal({ uid: 1000, gid: 50, name: 'vcap', home: '/home/vcap', groups: [50, 999] });
    expect(resolveUser('root:docker', PASSWD, GROUP).gid).to.equal(999);
    expect(resolveUser('1000:docker', PASSWD, GROUP).gid).to.equal(999);
  });

  it('an empty group part keeps the user\'s gid', () => {
    expect(resolveUser('vcap:', PASSWD, GROUP).gid).to.equal(1001);
  });

  it('fails on a missing user with runc\'s text', () => {
    expect(() => resolveUser('x', PASSWD, GROUP)).to.throw(InvalidArgument, 'unable to find user x: no matching entries in passwd file');
    expect(() => resolveUser('vcap', undefined, undefined)).to.throw(InvalidArgument, 'unable to find user vcap');
    // comment lines and lines with a non-numeric uid are not entries
    expect(() => resolveUser('# a comment', PASSWD, GROUP)).to.throw(/unable to find user/);
    expect(() => resolveUser('broken', PASSWD, GROUP)).to.throw(/unable to find user broken/);
  });

  it('fails on a missing group with runc\'s text', () => {
    expect(() => resolveUser('vcap:nogroup', PASSWD, GROUP)).to.throw(InvalidArgument, 'unable to find group nogroup: no matching entries in group file');
    expect(() => resolveUser('vcap:staff', PASSWD, undefined)).to.throw(/unable to find group staff/);
  });

  // BUG candidate: runc's GetExecUser (which users.ts says it follows, and Guardian uses with
  // defaults Uid 0 / Gid 0) leaves the gid at the default 0 for a numeric uid with no passwd
  // entry; here it becomes the uid.
  it('a numeric uid with no passwd entry gets gid 0, as runc gives it', () => {
    expect(resolveUser('4242', PASSWD, GROUP)).to.deep.equal({ uid: 4242, gid: 0, name: '4242', home: '/', groups: [] });
  });

  it('any numeric uid:gid is taken literally', () => {
    fc.assert(
      fc.property(fc.nat({ max: 1 << 30 }), fc.nat({ max: 1 << 30 }), (uid, gid) => {
        const u = resolveUser(`${uid}:${gid}`, PASSWD, GROUP);
        expect([u.uid, u.gid]).to.deep.equal([uid, gid]);
      }),
    );
  });
});
