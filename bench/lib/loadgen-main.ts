// Child-process entry of the load generator: options as JSON in argv[2], result as JSON on stdout.
import { runLoad, type LoadOptions } from "./loadgen.ts";

const opts = JSON.parse(process.argv[2] ?? "{}") as LoadOptions;
const res = await runLoad(opts);
process.stdout.write(JSON.stringify(res) + "\n");
process.exit(0);
