// Session binding (RoleAllowance.spec.bindSessions): a Deny statement appended to every session
// policy issued under an allowance, so that credentials copied out of a pod (SSRF, a log line, a
// compromised dependency) are refused by AWS when used from anywhere else.
//
// The statement denies every action when the request does not come from the pod's (or node's)
// address, VPC or VPC endpoint. IAM evaluates a negated operator on a key the request does not
// carry as true, so a request without the key (aws:VpcSourceIp outside a VPC endpoint,
// aws:SourceVpc from the internet) is denied too: the binding fails closed. Calls that AWS services
// make on the principal's behalf (S3 calling KMS for SSE-KMS, CloudFormation creating resources)
// come from the service, not the pod; by default they are exempt via aws:ViaAWSService.
//
// The addresses come from the live pod's status (the server reads it on every request), never
// from the tenant's AccessPolicy, and every one must be a plain IPv4 or IPv6 address: anything
// else refuses issuance rather than binding to something unintended.

import { isIPv4, isIPv6 } from "node:net";
import type { IamStatement, PodFacts, SessionBinding } from "./types.ts";

export class BindingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BindingError";
  }
}

/**
 * The pod has no address (yet) that a binding or ${pod.ip} / ${node.ip} needs. Transient: the
 * agent may ask for a pod bound to its node before the CNI has given it an address, and no
 * request from the pod itself can arrive before it has one.
 */
export class PodAddressUnknownError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PodAddressUnknownError";
  }
}

/** VPC and VPC endpoint IDs as AWS issues them (8 or 17 hex digits). */
export const VPC_ID = /^vpc-(?:[0-9a-f]{8}|[0-9a-f]{17})$/;
export const VPCE_ID = /^vpce-(?:[0-9a-f]{8}|[0-9a-f]{17})$/;
export const MAX_BINDING_IDS = 16;
export const MAX_BINDING_ACTIONS = 32;
/** An IAM action pattern: `*`, or `service:Action` with * and ? in the action part. */
export const ACTION_PATTERN = /^(?:\*|[a-z0-9-]{1,64}:[A-Za-z0-9*?]{1,128})$/;

// Only the characters of a plain address: no zone index ("%eth0"), no prefix length, no spaces.
const ADDRESS_CHARS = /^[0-9A-Fa-f.:]{2,45}$/;

/** Whether `value` is a plain IPv4 or IPv6 address, safe to put into a policy as is. */
export function isPlainAddress(value: string): boolean {
  return ADDRESS_CHARS.test(value) && (isIPv4(value) || isIPv6(value));
}

/** The addresses a binding to PodIP or NodeIP uses, validated; throws BindingError. */
export function boundAddresses(binding: SessionBinding, pod: PodFacts): string[] {
  const nodeSide = binding.to === "NodeIP";
  const addresses = (nodeSide ? pod.hostIPs : pod.podIPs) ?? [];
  const field = nodeSide ? "status.hostIP" : "status.podIP";
  const what = nodeSide ? "node IP" : "IP";
  if (addresses.length === 0)
    throw new PodAddressUnknownError(
      `pod ${pod.namespace}/${pod.name} has no ${what} in its status yet (${field}), which its session binding to ${binding.to} needs`,
    );
  for (const address of addresses)
    if (!isPlainAddress(address))
      throw new BindingError(
        `pod ${pod.namespace}/${pod.name}: its ${what} (${field}) is not a plain IP address`,
      );
  return addresses;
}

function hostPrefix(address: string): string {
  return isIPv4(address) ? `${address}/32` : `${address}/128`;
}

/** The values a binding compares the request with: /32 or /128 prefixes, or VPC (endpoint) IDs. */
export function bindingValues(binding: SessionBinding, pod: PodFacts): string[] {
  switch (binding.to) {
    case "PodIP":
    case "NodeIP":
      return boundAddresses(binding, pod).map(hostPrefix);
    case "SourceVpc":
      return [...(binding.vpcIds ?? [])];
    case "SourceVpce":
      return [...(binding.vpceIds ?? [])];
  }
}

/** The IAM condition (operator and key) a binding denies on. */
export function bindingCondition(binding: SessionBinding): { operator: string; key: string } {
  switch (binding.to) {
    case "PodIP":
    case "NodeIP":
      return { operator: "NotIpAddress", key: `aws:${binding.via ?? "SourceIp"}` };
    case "SourceVpc":
      return { operator: "StringNotEquals", key: "aws:SourceVpc" };
    case "SourceVpce":
      return { operator: "StringNotEquals", key: "aws:SourceVpce" };
  }
}

/** The Deny statement that binds a session to its origin; throws BindingError when it cannot. */
export function bindingStatement(binding: SessionBinding, pod: PodFacts): IamStatement {
  const values = bindingValues(binding, pod);
  // validation guarantees IDs for the VPC forms; an empty list here would deny nothing
  if (values.length === 0) throw new BindingError(`binding to ${binding.to} has nothing to bind to`);
  const { operator, key } = bindingCondition(binding);
  const condition: Record<string, Record<string, unknown>> = { [operator]: { [key]: values } };
  if (binding.exemptAwsServiceCalls !== false) condition.BoolIfExists = { "aws:ViaAWSService": "false" };
  const actions = binding.actions && binding.actions.length > 0 ? [...binding.actions] : "*";
  return { Effect: "Deny", Action: actions, Resource: "*", Condition: condition };
}

/** One line for explain and status messages: what a binding requires of a request. */
export function describeBinding(binding: SessionBinding, values: string[]): string {
  const { operator, key } = bindingCondition(binding);
  const where = operator === "NotIpAddress" ? `${key} in` : `${key} one of`;
  const exempt =
    binding.exemptAwsServiceCalls !== false
      ? "; calls AWS services make on its behalf (aws:ViaAWSService) are exempt"
      : "; calls AWS services make on its behalf are bound too";
  const which = binding.actions?.length ? `every request for ${binding.actions.join(", ")}` : "every request";
  return `bound to ${binding.to}: ${which} is denied unless ${where} ${values.join(", ")}${exempt}`;
}
