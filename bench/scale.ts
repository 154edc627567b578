import type { BenchEnv } from "./lib/env.ts";
export interface ScaleParams {
  steps: number[];
  issue: number;
  budgetMs?: number;
}
export interface ScaleResult {
  params: ScaleParams;
  steps: unknown[];
  notes: string[];
}
export async function benchScale(_env: BenchEnv, p: ScaleParams): Promise<ScaleResult> {
  return { params: p, steps: [], notes: [] };
}
