// Ctrl-C or SIGTERM in the middle of a benchmark: stop what the running section started
// (clusters, servers, agents, network namespaces, iptables rules) before exiting, instead of
// leaving it behind. Sections register their cleanup while it is due; a second signal exits at once.
type Cleanup = () => Promise<unknown> | unknown;

const cleanups: Cleanup[] = [];
let aborting = false;

/** Registers `fn` to run if the process is interrupted; returns its unregistration. */
export function onAbort(fn: Cleanup): () => void {
  cleanups.push(fn);
  return () => {
    const i = cleanups.lastIndexOf(fn);
    if (i >= 0) cleanups.splice(i, 1);
  };
}

function abort(sig: NodeJS.Signals): void {
  if (aborting) process.exit(130);
  aborting = true;
  console.error(`bench: ${sig}: stopping what this run started (again to exit at once) …`);
  void (async () => {
    for (const fn of cleanups.splice(0).reverse()) {
      try {
        await fn();
      } catch (e) {
        console.error(`bench cleanup: ${(e as Error).message}`);
      }
    }
  })().finally(() => process.exit(130));
}

let installed = false;
/** Makes SIGINT and SIGTERM run the registered cleanups, then exit with 130. */
export function installAbortHandlers(): void {
  if (installed) return;
  installed = true;
  process.on("SIGINT", abort);
  process.on("SIGTERM", abort);
}
