import { expect } from 'chai';
import {
  EMPTY_CONFIG,
  normaliseDriver,
  normaliseLogLevel,
  parseConfig,
  resolveCreate,
  resolveGlobals,
  resolveThreshold,
} from '../../plugins/grootfs/config.js';

const SEED_CONFIG = `
store: /home/ubuntu/gdn/store
driver: overlay-xfs
log_level: debug
create:
  json: true
  without_mount: true
  disk_limit_size_bytes: 1024
  insecure_registries:
    - 10.0.0.1:5000
clean:
  threshold_bytes: 2048
  cache_size: 1
init:
  store_size_bytes: 4096
store_path: /ignored
btrfs_bin: /ignored
`;

describe('grootfs config', () => {
  it('reads the keys of cli.md §6.2 and ignores unknown ones', () => {
    const c = parseConfig(SEED_CONFIG);
    expect(c.store).to.equal('/home/ubuntu/gdn/store');
    expect(c.driver).to.equal('overlay-xfs');
    expect(c.logLevel).to.equal('debug');
    expect(c.create).to.deep.include({ withoutMount: true, diskLimitSizeBytes: 1024, insecureRegistries: ['10.0.0.1:5000'] });
    expect(c.clean.thresholdBytes).to.equal(2048);
    expect(c.init.storeSizeBytes).to.equal(4096);
  });

  it('takes an empty file and empty sections', () => {
    expect(parseConfig('')).to.deep.equal(EMPTY_CONFIG);
    expect(parseConfig('create:\nclean:\n').create).to.deep.equal(EMPTY_CONFIG.create);
  });

  it('rejects bad YAML and wrongly typed values as an invalid config file', () => {
    expect(() => parseConfig('store: [unclosed')).to.throw(/^invalid config file/);
    expect(() => parseConfig('create:\n  disk_limit_size_bytes: lots\n')).to.throw(/^invalid config file: create.disk_limit_size_bytes/);
    expect(() => parseConfig('- a list\n')).to.throw(/^invalid config file/);
  });

  it('ranks an explicit flag over the config over the default', () => {
    const c = parseConfig(SEED_CONFIG);
    const d = { store: '/var/lib/trellis/1000/store' };
    expect(resolveGlobals({}, EMPTY_CONFIG, d).store).to.equal(d.store);
    expect(resolveGlobals({}, c, d).store).to.equal('/home/ubuntu/gdn/store');
    expect(resolveGlobals({ store: '/flag' }, c, d).store).to.equal('/flag');
    expect(resolveGlobals({}, c, d).logLevel).to.equal('debug');
    expect(resolveGlobals({ logLevel: 'error' }, c, d).logLevel).to.equal('error');
    expect(resolveCreate({}, c).diskLimitBytes).to.equal(1024);
    expect(resolveCreate({ diskLimitSizeBytes: 5 }, c).diskLimitBytes).to.equal(5);
    expect(resolveCreate({}, c).insecureRegistries).to.deep.equal(['10.0.0.1:5000']);
    expect(resolveCreate({ insecureRegistry: ['r:1'] }, c).insecureRegistries).to.deep.equal(['r:1']);
    expect(resolveCreate({}, c).withoutMount).to.equal(true);
    expect(resolveCreate({ withMount: true }, c).withoutMount).to.equal(false);
    expect(resolveThreshold(undefined, c)).to.equal(2048);
    expect(resolveThreshold(7, c)).to.equal(7);
  });

  it('resolves clean-on-create from the flags or the config', () => {
    const on = parseConfig('create:\n  with_clean: true\n');
    expect(resolveCreate({}, EMPTY_CONFIG).withClean).to.equal(false);
    expect(resolveCreate({}, on).withClean).to.equal(true);
    expect(resolveCreate({ withoutClean: true }, on).withClean).to.equal(false);
    expect(resolveCreate({ withClean: true }, EMPTY_CONFIG).withClean).to.equal(true);
    expect(() => resolveCreate({ withClean: true, withoutClean: true }, EMPTY_CONFIG)).to.throw(
      'with-clean and without-clean cannot be used together',
    );
    expect(() => resolveCreate({ withMount: true, withoutMount: true }, EMPTY_CONFIG)).to.throw(/cannot be used together/);
  });

  it('refuses negative sizes with grootfs messages', () => {
    expect(() => resolveCreate({ diskLimitSizeBytes: -1 }, EMPTY_CONFIG)).to.throw('invalid argument: disk limit cannot be negative');
    expect(() => resolveThreshold(-1, EMPTY_CONFIG)).to.throw('invalid argument: clean threshold cannot be negative');
    expect(() => resolveCreate({ diskLimitSizeBytes: Number.NaN }, EMPTY_CONFIG)).to.throw(/disk limit must be a whole number/);
  });

  it('knows its drivers', () => {
    expect(normaliseDriver('overlay')).to.equal('overlay');
    expect(normaliseDriver('overlay-xfs')).to.equal('overlay');
    expect(normaliseDriver('btrfs')).to.equal('btrfs');
    expect(() => normaliseDriver('zfs')).to.throw(/invalid driver `zfs`/);
  });

  it('maps log levels like grootfs', () => {
    expect(normaliseLogLevel(undefined, undefined)).to.equal('fatal');
    expect(normaliseLogLevel('warn', undefined)).to.equal('fatal');
    expect(normaliseLogLevel(undefined, '/tmp/log')).to.equal('info');
    expect(normaliseLogLevel('error', '/tmp/log')).to.equal('error');
    expect(normaliseLogLevel('debug', undefined)).to.equal('debug');
  });
});
