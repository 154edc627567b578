// Asks the metadata endpoint for credentials the way an SDK does at start-up (token PUT, role
// listing, credentials GET; 1 s timeouts) every interval, to record what the endpoint itself did
// during a fault. Prints one JSON line per attempt with the key id it got (never the secret).
// With `keep-token`, the IMDSv2 token is fetched once and reused as an SDK does for its TTL; a
// token the endpoint no longer accepts is fetched again and the line says `tokenRefused`.
//   node poller.ts <intervalMs> [keep-token]
const [intervalArg = "250", mode = ""] = process.argv.slice(2);
const keepToken = mode === "keep-token";
let kept: string | undefined;
const base = "http://169.254.169.254";
let stop = false;
process.on("SIGTERM", () => (stop = true));

async function get(path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(base + path, { ...init, signal: AbortSignal.timeout(1000) });
}

while (!stop) {
  const t0 = performance.now();
  let line: Record<string, unknown>;
  try {
    const newToken = async (): Promise<string> => {
      const tok = await get("/latest/api/token", {
        method: "PUT",
        headers: { "x-aws-ec2-metadata-token-ttl-seconds": "21600" },
      });
      if (tok.status !== 200) throw new Error(`token ${tok.status}`);
      return tok.text();
    };
    const hadToken = kept !== undefined;
    kept = keepToken && kept !== undefined ? kept : await newToken();
    let h = { "x-aws-ec2-metadata-token": kept };
    let role = await get("/latest/meta-data/iam/security-credentials/", { headers: h });
    let tokenRefused = false;
    if (role.status === 401 && hadToken && keepToken) {
      tokenRefused = true;
      kept = await newToken();
      h = { "x-aws-ec2-metadata-token": kept };
      role = await get("/latest/meta-data/iam/security-credentials/", { headers: h });
    }
    if (role.status !== 200) throw new Error(`role ${role.status}`);
    const doc = await get(`/latest/meta-data/iam/security-credentials/${await role.text()}`, { headers: h });
    if (doc.status !== 200) throw new Error(`credentials ${doc.status}`);
    const creds = (await doc.json()) as { AccessKeyId: string; Expiration: string };
    line = {
      ok: true,
      key: creds.AccessKeyId,
      exp: creds.Expiration,
      ...(tokenRefused ? { tokenRefused } : {}),
    };
  } catch (err) {
    const e = err as Error & { cause?: { code?: string } };
    line = { ok: false, err: e.cause?.code ?? e.name + ": " + e.message };
  }
  console.log(JSON.stringify({ t: Date.now(), ms: performance.now() - t0, ...line }));
  await new Promise((r) => setTimeout(r, Number(intervalArg)));
}
