// The hook's repair loop, which must never fight another agent's: it repairs only while this
// agent owns the DNAT (no higher generation in the rules), pauses while a successor switches the
// rules to itself, and stops for good once superseded.
import type { HookOwner } from "./hook/iptables.ts";

export interface RepairableHook {
  owner(): Promise<HookOwner | undefined>;
  install(): Promise<boolean>;
}

export interface RepairHandlers {
  onRepaired(): void;
  onError(err: unknown): void;
  /** The rules carry a higher generation than ours: another agent owns them now. */
  onSuperseded(generation: number): void;
}

export class RepairLoop {
  private readonly hook: RepairableHook;
  private readonly generation: number;
  private readonly on: RepairHandlers;
  private running: Promise<void> | undefined;
  private paused = false;
  private stopped = false;

  constructor(hook: RepairableHook, generation: number, on: RepairHandlers) {
    this.hook = hook;
    this.generation = generation;
    this.on = on;
  }

  /** One check (and repair); skipped while one is running, paused or stopped. */
  tick(): Promise<void> {
    if (this.running || this.paused || this.stopped) return this.running ?? Promise.resolve();
    this.running = this.check().finally(() => (this.running = undefined));
    return this.running;
  }

  private async check(): Promise<void> {
    try {
      const owner = await this.hook.owner();
      if (this.paused || this.stopped) return;
      if (owner && owner.generation > this.generation) {
        this.stopped = true;
        this.on.onSuperseded(owner.generation);
        return;
      }
      if (await this.hook.install()) this.on.onRepaired();
    } catch (err) {
      this.on.onError(err);
    }
  }

  /** No repair from now on until resume(); resolves once the one in flight (if any) is done. */
  async pause(): Promise<void> {
    this.paused = true;
    await this.running;
  }

  resume(): void {
    this.paused = false;
  }

  stop(): void {
    this.stopped = true;
  }

  get active(): boolean {
    return !this.paused && !this.stopped;
  }
}
