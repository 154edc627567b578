// Replaced by the end-to-end demo; until then it explains that it is not there yet.
export async function runDemo(): Promise<void> {
  throw new Error("demo: not implemented yet");
}
