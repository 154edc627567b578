// How both demos (test/e2e/demo.ts, test/node/demo.ts) print their story: numbered steps,
// indented lines, colours only on a terminal.
const tty = process.stdout.isTTY;
const paint = (code: string) => (text: string) => (tty ? `\x1b[${code}m${text}\x1b[0m` : text);
export const bold = paint("1");
export const dim = paint("2");
export const green = paint("32");
export const red = paint("31");
export const cyan = paint("36");

/** The demo's name in bold with its first line, then the rest of what it runs on. */
export function banner(title: string, first: string, ...rest: string[]): void {
  console.log(bold(title) + dim(` — ${first}`));
  for (const line of rest) console.log(dim(`  ${line}`));
}

let stepNumber = 0;
export const step = (title: string): void => console.log(`\n${bold(`${++stepNumber}. ${title}`)}`);
export const say = (text: string): void => console.log(`   ${text}`);
/** A command's output under the step, its blank lines left out. */
export const indent = (text: string): string =>
  text
    .trimEnd()
    .split("\n")
    .filter((line) => line.trim())
    .map((line) => `     ${line}`)
    .join("\n");
