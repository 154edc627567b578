// The bodies the bare baseline serves: byte-for-byte the shape the agent serves (a token of the
// same length, the role name, the pretty-printed credentials document).
export const ROLE_NAME = "bench-role";

export function credentialsDoc(i: number, expiration: string): string {
  const id = String(i).padStart(6, "0");
  return JSON.stringify(
    {
      Code: "Success",
      LastUpdated: new Date().toISOString().replace(/\.\d{3}Z$/, "Z"),
      Type: "AWS-HMAC",
      AccessKeyId: `ASIABENCH${id}XXXXX`,
      SecretAccessKey: "s".repeat(40),
      Token: "t".repeat(700),
      Expiration: expiration,
    },
    null,
    2,
  );
}

/** Same length as the agent's IMDSv2 tokens for a 36-character pod UID. */
export const BASELINE_TOKEN = "A".repeat(75) + "." + "B".repeat(24);
