// Whoever is root on a node can drop a static-pod manifest naming any namespace, and the kubelet
// then creates the mirror pod there, bound to that node. Nothing about such a pod was admitted
// through the namespace's owners, so its namespace, labels and name prove nothing. The kubelet
// marks it with the annotation and (with NodeRestriction) a Node owner; either one is enough.

/** The annotation the kubelet puts on the API object it creates for a static pod. */
export const MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror";

interface PodMetadataLike {
  annotations?: Record<string, string> | null;
  ownerReferences?: ReadonlyArray<{ kind?: string } | null> | null;
}

/** True for a mirror (static) pod: the annotation, or an owner of kind Node. */
export function isMirrorPod(metadata: PodMetadataLike | null | undefined): boolean {
  const annotations = metadata?.annotations;
  if (
    annotations != null &&
    typeof annotations === "object" &&
    Object.hasOwn(annotations, MIRROR_POD_ANNOTATION)
  )
    return true;
  const owners = metadata?.ownerReferences;
  return Array.isArray(owners) && owners.some((owner) => owner?.kind === "Node");
}
