// How gaol turns `-c "sh -c 'echo hi'"` into path + args: mattn/go-shellwords'
// Parse with its defaults (no env expansion, no backtick execution).

const SPACE = new Set([' ', '\t', '\r', '\n']);

/**
 * Words of a command line. Like go-shellwords of gaol's era: single quotes are
 * literal; a backslash escapes the next character outside single quotes
 * (inside double quotes too); an empty quoted word ('' or "") yields no
 * argument; parsing stops at an unquoted ; & | < > (and a digit word right
 * before > is dropped, as a redirection's fd). Unbalanced quotes or a
 * trailing backslash: `invalid command line string`.
 */
export function shellWords(line: string): string[] {
  const args: string[] = [];
  let buf = '';
  let got = false;
  let escaped = false;
  let single = false;
  let double = false;
  let backQuote = false;
  for (const r of line) {
    if (escaped) {
      buf += r;
      escaped = false;
      got = true;
      continue;
    }
    if (r === '\\') {
      if (single) {
        buf += r;
        got = true;
      } else escaped = true;
      continue;
    }
    if (SPACE.has(r)) {
      if (single || double || backQuote) {
        buf += r;
        got = true;
      } else if (got) {
        args.push(buf);
        buf = '';
        got = false;
      }
      continue;
    }
    if (r === '`' && !single && !double) backQuote = !backQuote;
    else if (r === '"' && !single) {
      double = !double;
      continue;
    } else if (r === "'" && !double) {
      single = !single;
      continue;
    } else if (';&|<>'.includes(r) && !(single || double || backQuote)) {
      if (r === '>' && buf.length > 0 && buf[0]! >= '0' && buf[0]! <= '9') got = false;
      break;
    }
    got = true;
    buf += r;
  }
  if (escaped || single || double || backQuote) throw new Error('invalid command line string');
  if (got) args.push(buf);
  return args;
}
