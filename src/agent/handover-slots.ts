// The two port slots agents alternate between across hand-overs (handover.ts): the successor
// listens on the slot its predecessor does not, so both serve at once while the DNAT moves.
import { systemClock, type Clock } from "../common/clock.ts";
import type { HostPort } from "../common/config-values.ts";

export type Slot = 0 | 1;

export interface SlotPorts {
  imds: HostPort;
  container: HostPort | undefined;
}

export function otherSlot(s: Slot): Slot {
  return s === 0 ? 1 : 0;
}

/** Slot 0: the configured listeners; slot 1: the same hosts, ports + offset. */
export function slotPorts(
  slot: Slot,
  imds: HostPort,
  container: HostPort | undefined,
  offset: number,
): SlotPorts {
  const shift = (hp: HostPort): HostPort => ({ host: hp.host, port: hp.port + (slot === 1 ? offset : 0) });
  return { imds: shift(imds), container: container ? shift(container) : undefined };
}

/** Which slot an IMDS port belongs to; undefined: neither (a hook written for other ports). */
export function slotOfPort(port: number, imds: HostPort, offset: number): Slot | undefined {
  if (port === imds.port) return 0;
  if (port === imds.port + offset) return 1;
  return undefined;
}

/** Polls `done` every `intervalMs` until it holds (true) or `timeoutMs` passed (false). */
export async function waitUntil(
  done: () => boolean,
  timeoutMs: number,
  intervalMs = 50,
  clock: Clock = systemClock,
): Promise<boolean> {
  const deadline = clock.now() + timeoutMs;
  while (!done()) {
    if (clock.now() >= deadline) return false;
    await new Promise<void>((resolve) => clock.setTimeout(resolve, intervalMs));
  }
  return true;
}
