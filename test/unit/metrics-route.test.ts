// issue #12: the request histogram's route label never carries a handle, key or id.

import { expect } from 'chai';
import { routeOf } from '../../src/metrics/metrics.js';

describe('metrics routeOf', () => {
  it('replaces handles, property keys and process ids with placeholders', () => {
    const cases: Array<[string, string]> = [
      ['/ping', '/ping'],
      ['/containers', '/containers'],
      ['/containers?garden.state=all', '/containers'],
      ['/containers/bulk_info?handles=a,b', '/containers/bulk_info'],
      ['/containers/my-handle/info', '/containers/:handle/info'],
      ['/containers/h', '/containers/:handle'],
      ['/containers/h/properties', '/containers/:handle/properties'],
      ['/containers/h/properties/Some%20Key', '/containers/:handle/properties/:key'],
      ['/containers/h/limits/memory', '/containers/:handle/limits/memory'],
      ['/containers/h/net/out/bulk', '/containers/:handle/net/out/bulk'],
      ['/containers/h/processes/1234-abcd', '/containers/:handle/processes/:pid'],
      ['/no/such/route', '/other'],
      ['/containers/h/made-up', '/containers/:handle/:x'],
    ];
    for (const [url, route] of cases) expect(routeOf(url), url).to.equal(route);
  });
});
