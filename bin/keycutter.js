#!/usr/bin/env node
// Runs the compiled CLI when it exists (the image), else the TypeScript source (Node 24 strips types).
import { existsSync } from "node:fs";
const compiled = new URL("../dist/cli/main.js", import.meta.url);
await import(existsSync(compiled) ? compiled.href : new URL("../src/cli/main.ts", import.meta.url).href);
