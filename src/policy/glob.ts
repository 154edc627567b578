// The glob matcher for RoleAllowance patterns (role ARNs, namespaces, session tag keys).
//
// Semantics: '*' matches any run of characters and '?' exactly one character, and neither ever
// matches a separator ('/' or ':'). So `role/team-a-*` cannot reach into `role/team-a-x/team-b-db`
// and `iam::*:role` cannot span ARN fields.
//
// Why not a RegExp: patterns come from admins but the values from tenants, and each '*' compiled to
// `[^:]*` backtracks; with a few stars against a long roleArn that is seconds of blocked event loop
// per request. Because wildcards never match a separator, the separators of pattern and value must
// line up one to one, so both are walked segment by segment in lockstep. Within a segment the
// pattern is literal chunks between stars; the first chunk anchors at the start, the last at the
// end, and every middle chunk is placed at its leftmost occurrence after the previous one (leftmost
// placement never loses a match). No position is revisited across chunks, so the cost is at most
// |value| x (longest chunk) character comparisons: linear in the tenant's input for a given pattern,
// with no backtracking.

export const GLOB_SEPARATORS: ReadonlySet<string> = new Set(["/", ":"]);

/** Counts character comparisons, for tests that check the cost rather than the clock. */
export interface MatchCounter {
  steps: number;
}

function nextSeparator(text: string, from: number): number {
  let at = from;
  while (at < text.length && !GLOB_SEPARATORS.has(text.charAt(at))) at++;
  return at;
}

/** Does the separator-free chunk pattern[from, to) match value at `at` ('?' matches any one)? */
function chunkMatchesAt(
  pattern: string,
  from: number,
  to: number,
  value: string,
  at: number,
  counter: MatchCounter | undefined,
): boolean {
  for (let offset = 0; offset < to - from; offset++) {
    if (counter) counter.steps++;
    const wanted = pattern.charCodeAt(from + offset);
    if (wanted !== 63 /* ? */ && wanted !== value.charCodeAt(at + offset)) return false;
  }
  return true;
}

/** One separator-free segment: pattern[pFrom, pTo) against value[vFrom, vTo). */
function segmentMatches(
  pattern: string,
  pFrom: number,
  pTo: number,
  value: string,
  vFrom: number,
  vTo: number,
  counter: MatchCounter | undefined,
): boolean {
  const firstStar = pattern.indexOf("*", pFrom);
  if (firstStar === -1 || firstStar >= pTo) {
    return pTo - pFrom === vTo - vFrom && chunkMatchesAt(pattern, pFrom, pTo, value, vFrom, counter);
  }
  const lastStar = pattern.lastIndexOf("*", pTo - 1);
  const headLength = firstStar - pFrom;
  const tailLength = pTo - lastStar - 1;
  if (headLength + tailLength > vTo - vFrom) return false;
  if (!chunkMatchesAt(pattern, pFrom, firstStar, value, vFrom, counter)) return false;
  if (!chunkMatchesAt(pattern, lastStar + 1, pTo, value, vTo - tailLength, counter)) return false;
  let cursor = vFrom + headLength;
  const limit = vTo - tailLength;
  let chunkFrom = firstStar + 1;
  while (chunkFrom <= lastStar) {
    const chunkTo = pattern.indexOf("*", chunkFrom);
    const chunkLength = chunkTo - chunkFrom;
    if (chunkLength > 0) {
      let found = -1;
      for (let at = cursor; at + chunkLength <= limit; at++) {
        if (chunkMatchesAt(pattern, chunkFrom, chunkTo, value, at, counter)) {
          found = at;
          break;
        }
      }
      if (found === -1) return false;
      cursor = found + chunkLength;
    }
    chunkFrom = chunkTo + 1;
  }
  return true;
}

/** Whether `value` matches the glob `pattern` (see the module comment for the semantics). */
export function globMatches(pattern: string, value: string, counter?: MatchCounter): boolean {
  let pFrom = 0;
  let vFrom = 0;
  for (;;) {
    const pTo = nextSeparator(pattern, pFrom);
    const vTo = nextSeparator(value, vFrom);
    const patternDone = pTo === pattern.length;
    const valueDone = vTo === value.length;
    // Cheap structural rejections first: a different number or kind of separators never matches.
    if (patternDone !== valueDone) return false;
    if (!patternDone && pattern.charAt(pTo) !== value.charAt(vTo)) return false;
    if (!segmentMatches(pattern, pFrom, pTo, value, vFrom, vTo, counter)) return false;
    if (patternDone) return true;
    pFrom = pTo + 1;
    vFrom = vTo + 1;
  }
}
