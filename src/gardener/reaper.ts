// Garden's idle reaper (spec/garden-api.md §5.7): a timer per container, paused while
// a request names it, re-armed with the full duration when the last one finishes.
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

interface Entry {
  graceMs: number;
  inFlight: number;
  timer?: NodeJS.Timeout;
  deadline?: number;
}

export class Reaper {
  private readonly entries = new Map<string, Entry>();
  constructor(private readonly onExpire: (handle: string) => void) {}

  /** grace 0 means never. */
  track(handle: string, graceNs: bigint): void {
    const e = this.entries.get(handle) ?? { graceMs: 0, inFlight: 0 };
    e.graceMs = Number(graceNs / 1_000_000n);
    this.entries.set(handle, e);
    if (e.inFlight === 0) this.arm(handle, e);
  }

  untrack(handle: string): void {
    const e = this.entries.get(handle);
    if (e?.timer) clearTimeout(e.timer);
    this.entries.delete(handle);
  }

  /** A request about `handle` began; the returned function ends it. */
  begin(handle: string): () => void {
    const e = this.entries.get(handle);
    if (e === undefined) return () => {};
    e.inFlight++;
    if (e.timer) clearTimeout(e.timer);
    e.timer = undefined;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      e.inFlight--;
      if (e.inFlight === 0 && this.entries.get(handle) === e) this.arm(handle, e);
    };
  }

  private arm(handle: string, e: Entry): void {
    if (e.timer) clearTimeout(e.timer);
    e.timer = undefined;
    if (e.graceMs <= 0) return;
    e.deadline = Date.now() + e.graceMs;
    const tick = () => {
      const left = (e.deadline ?? 0) - Date.now();
      if (left > 0) {
        e.timer = setTimeout(tick, Math.min(left, MAX_TIMEOUT_MS));
        e.timer.unref();
        return;
      }
      e.timer = undefined;
      this.onExpire(handle);
    };
    e.timer = setTimeout(tick, Math.min(e.graceMs, MAX_TIMEOUT_MS));
    e.timer.unref();
  }

  stop(): void {
    for (const e of this.entries.values()) if (e.timer) clearTimeout(e.timer);
  }
}
