// A bounded least-recently-used map with a time-to-live, for memos that hostile input can grow
// (rejected tokens, per-source buckets). Never more than `max` entries: a new key evicts the
// least recently used one, so one more key never makes all the others forgotten.
// The API is the subset of the `lru-cache` package (v11) this project uses — `get`, `set` with a
// per-entry `ttl`, `has`, `delete`, `clear`, `size`, and the `perf` clock — so that moving to that
// package is a change of import.

export interface LRUCacheOptions {
  /** Most entries held; must be a positive integer. */
  max: number;
  /** Default lifetime of an entry in ms (0: no expiry). */
  ttl?: number;
  /** The clock TTLs are measured with (tests inject one); performance by default. */
  perf?: { now(): number };
}

interface Slot<V> {
  value: V;
  /** Clock time after which the entry is gone; Infinity for none. */
  expiresAt: number;
}

export class LRUCache<K, V> {
  readonly max: number;
  private readonly ttl: number;
  private readonly clock: { now(): number };
  // A Map iterates in insertion order: re-inserting on use keeps the least recently used first.
  private readonly slots = new Map<K, Slot<V>>();

  constructor(opts: LRUCacheOptions) {
    if (!Number.isInteger(opts.max) || opts.max < 1)
      throw new Error("LRUCache: max must be a positive integer");
    if (opts.ttl !== undefined && (!Number.isFinite(opts.ttl) || opts.ttl < 0))
      throw new Error("LRUCache: ttl must be a non-negative number");
    this.max = opts.max;
    this.ttl = opts.ttl ?? 0;
    this.clock = opts.perf ?? performance;
  }

  /** Entries held, expired ones not yet swept included (they are never returned). */
  get size(): number {
    return this.slots.size;
  }

  /** The value, marking it most recently used; undefined when absent or expired. */
  get(key: K): V | undefined {
    const slot = this.slots.get(key);
    if (slot === undefined) return undefined;
    if (slot.expiresAt <= this.clock.now()) {
      this.slots.delete(key);
      return undefined;
    }
    this.slots.delete(key);
    this.slots.set(key, slot);
    return slot.value;
  }

  /** Like get, without changing the order. */
  has(key: K): boolean {
    const slot = this.slots.get(key);
    if (slot === undefined) return false;
    if (slot.expiresAt <= this.clock.now()) {
      this.slots.delete(key);
      return false;
    }
    return true;
  }

  set(key: K, value: V, opts: { ttl?: number } = {}): this {
    const ttl = opts.ttl ?? this.ttl;
    const expiresAt = ttl > 0 ? this.clock.now() + ttl : Infinity;
    this.slots.delete(key);
    if (this.slots.size >= this.max) this.evictOne();
    this.slots.set(key, { value, expiresAt });
    return this;
  }

  delete(key: K): boolean {
    return this.slots.delete(key);
  }

  clear(): void {
    this.slots.clear();
  }

  private evictOne(): void {
    const oldest = this.slots.keys().next();
    if (!oldest.done) this.slots.delete(oldest.value);
  }
}
