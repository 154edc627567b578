// Which Events the credentials service records, in words a tenant can act on: a refusal on the
// pod (`kubectl describe pod`), and refusals and issuance failures tied to a policy on that
// AccessPolicy. The note is the refusal's own message — what the pod's IMDS answer already says —
// so an Event carries nothing the pod's namespace could not read there: never a secret, never
// another namespace's objects (the recorder puts each Event in its target's namespace).

import type { PodRef } from "../../api/contract.ts";
import type { ErrorCode } from "../../api/errors.ts";
import type { PolicyRef } from "../../policy/decide.ts";
import { API_VERSION } from "../../policy/types.ts";
import type { EventRecorder } from "./recorder.ts";

export const ISSUE_ACTION = "IssueCredentials";

export interface CredentialEvents {
  /** The pod (found with this UID) was refused credentials. */
  podDenied(pod: PodRef, code: ErrorCode, message: string): void;
  /** A refusal or issuance failure caused by the policy (the status writer shows the same). */
  policyRefused(policy: PolicyRef, reason: string, message: string): void;
}

export function credentialEvents(recorder: Pick<EventRecorder, "record">): CredentialEvents {
  return {
    podDenied(pod, code, message) {
      recorder.record(
        { apiVersion: "v1", kind: "Pod", namespace: pod.namespace, name: pod.name, uid: pod.uid },
        {
          type: "Warning",
          reason: code,
          action: ISSUE_ACTION,
          note: `AWS credentials refused (${code}): ${message}`,
        },
      );
    },
    policyRefused(policy, reason, message) {
      recorder.record(
        {
          apiVersion: API_VERSION,
          kind: "AccessPolicy",
          namespace: policy.namespace,
          name: policy.name,
          uid: policy.uid,
        },
        { type: "Warning", reason, action: ISSUE_ACTION, note: message },
      );
    },
  };
}
