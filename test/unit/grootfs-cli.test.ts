import { expect } from 'chai';
import { runCli } from '../../plugins/grootfs/cli.js';

// Only argument handling that fails before the store is touched: no files, no processes.
async function grootfs(...argv: string[]): Promise<{ code: number; out: string }> {
  let out = '';
  const code = await runCli(argv, { stdout: (t) => (out += t), getuid: () => 1000, logFd: 2 });
  return { code, out };
}

describe('grootfs command line', () => {
  it('rejects a wrong number of arguments with the grootfs message', async () => {
    expect(await grootfs('create', '/rootfs')).to.deep.equal({
      code: 1,
      out: 'invalid arguments - usage: grootfs create [options] <image> <id>\n',
    });
    expect(await grootfs('delete')).to.deep.equal({ code: 1, out: 'id was not specified\n' });
    expect((await grootfs('stats', 'a', 'b')).out).to.match(/^invalid arguments - usage: grootfs stats/);
    expect((await grootfs('list', 'extra')).out).to.match(/^invalid arguments/);
  });

  it('prints one line on stdout and exits 1 for bad flags', async () => {
    for (const argv of [
      ['create', '--with-clean', '--without-clean', '/rootfs', 'cake'],
      ['create', '--disk-limit-size-bytes', '-5', '/rootfs', 'cake'],
      ['--driver', 'btrfs', 'list'],
      ['--config', '/nonexistent/grootfs.yml', 'list'],
      ['create', '--no-such-flag', '/rootfs', 'cake'],
      ['no-such-command'],
      [],
    ]) {
      const r = await grootfs(...argv);
      expect(r.code, argv.join(' ')).to.equal(1);
      expect(r.out.split('\n'), argv.join(' ')).to.have.length(2);
    }
    expect((await grootfs('--config', '/nonexistent/grootfs.yml', 'list')).out).to.match(/^invalid config path/);
    expect((await grootfs('create', '--disk-limit-size-bytes', '-5', '/r', 'c')).out).to.equal(
      'invalid argument: disk limit cannot be negative\n',
    );
  });

  it('checks the id before looking at the store', async () => {
    expect(await grootfs('--store', '/nonexistent/store', 'create', '/rootfs', 'a/b')).to.deep.equal({
      code: 1,
      out: 'id `a/b` contains invalid characters: `/`\n',
    });
  });

  it('accepts the flags guardian and grootfs configs pass', async () => {
    const r = await grootfs(
      '--store', '/nonexistent/store', '--driver', 'overlay-xfs', '--newuidmap-bin', 'newuidmap',
      'create', '--exclude-image-from-quota', '--disk-limit-size-bytes', '1024', '--username', 'u', '--password', 'p',
      '--insecure-registry', 'a:1', '--insecure-registry', 'b:2', '--without-mount', '--with-clean', '/rootfs', 'cake',
    );
    expect(r).to.deep.equal({ code: 1, out: 'Store path is not initialized. Please run init-store.\n' });
  });
});
