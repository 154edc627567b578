import {
  AuthenticationV1Api,
  CoreV1Api,
  type KubeConfig,
  type V1Pod,
  type V1TokenReviewStatus,
} from "@kubernetes/client-node";
import { waitFor } from "./process.ts";

export interface PodSpecInput {
  namespace: string;
  name: string;
  nodeName: string;
  serviceAccountName?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  /** Without an IP the pod stays Pending, as before the CNI has run. */
  podIP?: string;
  hostIP?: string;
  hostNetwork?: boolean;
}

function isNotFound(err: unknown): boolean {
  return (err as { code?: number }).code === 404;
}
function isConflict(err: unknown): boolean {
  return (err as { code?: number }).code === 409;
}

/** Plays the kubelet (and the controllers a bare apiserver lacks) for tests. */
export class Kubelet {
  readonly core: CoreV1Api;
  readonly authn: AuthenticationV1Api;

  constructor(kc: KubeConfig) {
    this.core = kc.makeApiClient(CoreV1Api);
    this.authn = kc.makeApiClient(AuthenticationV1Api);
  }

  async ensureNamespace(name: string, labels?: Record<string, string>): Promise<void> {
    try {
      await this.core.createNamespace({ body: { metadata: { name, labels } } });
    } catch (err) {
      if (!isConflict(err)) throw err;
    }
  }

  async createServiceAccount(namespace: string, name: string): Promise<void> {
    await this.ensureNamespace(namespace);
    try {
      await this.core.createNamespacedServiceAccount({ namespace, body: { metadata: { name } } });
    } catch (err) {
      if (!isConflict(err)) throw err;
    }
  }

  async createNode(name: string, internalIP: string, podCIDR?: string): Promise<void> {
    const node = await this.core.createNode({
      body: { metadata: { name, labels: { "kubernetes.io/hostname": name } }, spec: { podCIDR } },
    });
    await this.core.replaceNodeStatus({
      name,
      body: {
        ...node,
        status: {
          addresses: [
            { type: "InternalIP", address: internalIP },
            { type: "Hostname", address: name },
          ],
          conditions: [
            {
              type: "Ready",
              status: "True",
              reason: "KubeletReady",
              message: "test kubelet",
              lastHeartbeatTime: new Date(),
              lastTransitionTime: new Date(),
            },
          ],
        },
      },
    });
  }

  /** Creates a pod bound to its node; with podIP, marks it Running with that IP. */
  async createPod(input: PodSpecInput): Promise<V1Pod> {
    const sa = input.serviceAccountName ?? "default";
    await this.createServiceAccount(input.namespace, sa);
    const pod = await this.core.createNamespacedPod({
      namespace: input.namespace,
      body: {
        metadata: { name: input.name, labels: input.labels, annotations: input.annotations },
        spec: {
          nodeName: input.nodeName,
          serviceAccountName: sa,
          hostNetwork: input.hostNetwork ?? false,
          containers: [{ name: "app", image: "example.invalid/app:1" }],
        },
      },
    });
    if (input.podIP === undefined) return pod;
    return this.setPodIP(input.namespace, input.name, input.podIP, input.hostIP);
  }

  /**
   * What the kubelet does once the CNI has given the pod an address and its containers have
   * started: one status update with the IP, phase Running and every container running.
   */
  async setPodIP(namespace: string, name: string, podIP: string, hostIP?: string): Promise<V1Pod> {
    for (let attempt = 0; ; attempt++) {
      const pod = await this.core.readNamespacedPod({ namespace, name });
      const startedAt = new Date();
      pod.status = {
        ...pod.status,
        phase: "Running",
        podIP,
        podIPs: [{ ip: podIP }],
        hostIP: hostIP ?? pod.status?.hostIP,
        hostIPs: hostIP ? [{ ip: hostIP }] : pod.status?.hostIPs,
        startTime: pod.status?.startTime ?? new Date(),
        conditions: [{ type: "Ready", status: "True", lastTransitionTime: new Date() }],
        containerStatuses: (pod.spec?.containers ?? []).map((c) => ({
          name: c.name,
          image: c.image ?? "",
          imageID: "",
          ready: true,
          restartCount: 0,
          started: true,
          state: { running: { startedAt } },
        })),
      };
      try {
        return await this.core.replaceNamespacedPodStatus({ namespace, name, body: pod });
      } catch (err) {
        if (!isConflict(err) || attempt > 5) throw err;
      }
    }
  }

  async setPodPhase(namespace: string, name: string, phase: "Succeeded" | "Failed"): Promise<V1Pod> {
    const pod = await this.core.readNamespacedPod({ namespace, name });
    pod.status = { ...pod.status, phase };
    return this.core.replaceNamespacedPodStatus({ namespace, name, body: pod });
  }

  /** A normal delete: with no kubelet to finish it, the pod lingers with a deletionTimestamp. */
  async terminatePod(namespace: string, name: string): Promise<void> {
    await this.core.deleteNamespacedPod({ namespace, name, gracePeriodSeconds: 30 });
  }

  /** Deletes the pod for good (grace period 0) and waits until the API no longer has it. */
  async deletePod(namespace: string, name: string): Promise<void> {
    try {
      await this.core.deleteNamespacedPod({ namespace, name, gracePeriodSeconds: 0 });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    await waitFor(`pod ${namespace}/${name} gone`, async () => {
      try {
        await this.core.readNamespacedPod({ namespace, name });
        return false;
      } catch (err) {
        if (isNotFound(err)) return true;
        throw err;
      }
    });
  }

  /**
   * A projected service-account token (TokenRequest), as the kubelet mounts it: bound to the pod
   * when podName/podUID are given. audiences default to ["keycutter"].
   */
  async requestToken(
    namespace: string,
    serviceAccount: string,
    opts: { podName?: string; podUID?: string; audiences?: string[]; expirationSeconds?: number },
  ): Promise<string> {
    const tr = await this.core.createNamespacedServiceAccountToken({
      namespace,
      name: serviceAccount,
      body: {
        spec: {
          audiences: opts.audiences ?? ["keycutter"],
          expirationSeconds: opts.expirationSeconds ?? 3600,
          boundObjectRef: opts.podName
            ? { apiVersion: "v1", kind: "Pod", name: opts.podName, uid: opts.podUID }
            : undefined,
        },
      },
    });
    const token = tr.status?.token;
    if (!token) throw new Error("TokenRequest returned no token");
    return token;
  }

  async reviewToken(token: string, audiences?: string[]): Promise<V1TokenReviewStatus> {
    const res = await this.authn.createTokenReview({ body: { spec: { token, audiences } } });
    return res.status ?? {};
  }
}
