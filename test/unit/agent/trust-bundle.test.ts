// The agent's CA bundle (src/agent/trust-bundle.ts): loaded when it appears, a new connection
// pool when its contents change, refusal (fail closed) while there is none.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { Agent as HttpsAgent } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KeycutterError } from "../../../src/api/errors.ts";
import { TrustBundle } from "../../../src/agent/trust-bundle.ts";
import { makeCa } from "../../../src/server/tls/certificates.ts";

describe("TrustBundle", () => {
  it("refuses without a bundle, loads it when it appears, swaps pools only on a changed bundle", () => {
    const dir = mkdtempSync(join(tmpdir(), "kc-trust-"));
    try {
      const file = join(dir, "ca.crt");
      const made: Buffer[] = [];
      const trust = new TrustBundle(file, (ca) => {
        made.push(ca);
        return new HttpsAgent({ ca });
      });
      let now = 0;
      assert.throws(
        () => trust.agent(now),
        (e: unknown) => e instanceof KeycutterError && e.code === "Unavailable",
      );
      writeFileSync(file, "not a certificate");
      now += 1000;
      assert.throws(() => trust.agent(now), KeycutterError, "a file without a certificate is no bundle");

      const first = makeCa(Date.now(), 3_600_000, "one").cert;
      writeFileSync(file, first);
      now += 1000;
      const pool1 = trust.agent(now);
      assert.equal(made.at(-1)!.toString(), first);
      assert.equal(trust.agent(now + 10), pool1, "checked at most once a second");

      // the kubelet's atomic swap: same contents rewritten is not a change
      writeFileSync(join(dir, "tmp"), first);
      renameSync(join(dir, "tmp"), file);
      now += 1000;
      assert.equal(trust.agent(now), pool1);
      assert.equal(trust.reloads, 0);

      const both = first + makeCa(Date.now(), 3_600_000, "two").cert;
      writeFileSync(join(dir, "tmp"), both);
      renameSync(join(dir, "tmp"), file);
      assert.equal(trust.agent(now + 500), pool1, "not yet re-checked");
      now += 1000;
      const pool2 = trust.agent(now);
      assert.notEqual(pool2, pool1);
      assert.equal(made.at(-1)!.toString(), both);
      assert.equal(trust.reloads, 1);

      // a bundle that vanishes keeps the last one (the kubelet swaps, it does not delete)
      rmSync(file);
      now += 1000;
      assert.equal(trust.agent(now), pool2);
      trust.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
