// gdn's debug server (Garden's --debug-bind-ip/--debug-bind-port): GET /debug/vars answers
// in the shape of Go's expvar, which Garden's tooling reads (memstats.Alloc and friends),
// with Node's own numbers behind the Go names.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { memoryUsage } from 'node:process';

export interface DebugVars {
  cmdline: string[];
  memstats: Record<string, number>;
  containers: number;
}

export function debugVars(argv: string[], containers: number): DebugVars {
  const m = memoryUsage();
  return {
    cmdline: argv,
    memstats: {
      Alloc: m.heapUsed + m.external,
      HeapAlloc: m.heapUsed,
      HeapSys: m.heapTotal,
      HeapInuse: m.heapUsed,
      Sys: m.rss,
      TotalAlloc: m.heapUsed + m.external,
      ExternalAlloc: m.external,
      ArrayBuffers: m.arrayBuffers,
    },
    containers,
  };
}

export function debugHandler(vars: () => DebugVars): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' || path !== '/debug/vars') {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('404 page not found\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
    res.end(`${JSON.stringify(vars(), null, 1)}\n`);
  };
}

export function createDebugServer(vars: () => DebugVars, guard = (h: ReturnType<typeof debugHandler>) => h): Server {
  return createServer(guard(debugHandler(vars)));
}
