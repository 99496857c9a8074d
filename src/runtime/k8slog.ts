// conmon's k8s-file log: "<timestamp> <stdout|stderr> <F|P> <bytes>\n". F ends a
// line (the newline was taken off), P is a partial write: together they give back
// the exact byte stream of each pipe.

export interface LogRecord {
  stream: 'stdout' | 'stderr';
  data: Buffer;
}

/** Parses complete records from `buf`; returns them and how many bytes they used. */
export function parseK8sLog(buf: Buffer): { records: LogRecord[]; consumed: number } {
  const records: LogRecord[] = [];
  let pos = 0;
  for (;;) {
    const nl = buf.indexOf(0x0a, pos);
    if (nl < 0) break;
    const s1 = buf.indexOf(0x20, pos);
    const s2 = s1 < 0 ? -1 : buf.indexOf(0x20, s1 + 1);
    const s3 = s2 < 0 ? -1 : buf.indexOf(0x20, s2 + 1);
    if (s1 < 0 || s2 < 0 || s1 > nl || s2 > nl) {
      pos = nl + 1;
      continue;
    }
    const stream = buf.toString('latin1', s1 + 1, s2) === 'stderr' ? 'stderr' : 'stdout';
    // "P" or "F"; with no content the third space may be missing.
    const tagEnd = s3 < 0 || s3 > nl ? nl : s3;
    const tag = buf.toString('latin1', s2 + 1, tagEnd);
    const content = tagEnd === nl ? Buffer.alloc(0) : buf.subarray(tagEnd + 1, nl);
    const data = tag === 'P' ? Buffer.from(content) : Buffer.concat([content, Buffer.from('\n')]);
    if (data.length > 0) records.push({ stream, data });
    pos = nl + 1;
  }
  return { records, consumed: pos };
}
