// The guest suites' checks (test/cgroup-v2/suite.ts, xfs.ts): plain functions, no test framework in the guest.

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function assert(cond: unknown, what: string): asserts cond {
  if (!cond) throw new Error(what);
}

export function eq<T>(got: T, want: T, what: string): void {
  if (got !== want) throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
}

/** Whether f holds within ms, tried every step ms (a throw counts as not yet). */
export async function eventually(f: () => Promise<boolean> | boolean, ms: number, step = 250): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      if (await f()) return true;
    } catch {
      // not yet
    }
    if (Date.now() > end) return false;
    await sleep(step);
  }
}
