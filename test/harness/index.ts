export { startCluster, kubeconfigYaml, type Cluster } from "./cluster.ts";
export { Kubelet, type PodSpecInput } from "./kubelet.ts";
export {
  PodNetwork,
  CNI_NETWORK,
  type NodeNet,
  type PodNet,
  type CniPodArgs,
  type ExecResult,
} from "./netns.ts";
export {
  startMoto,
  defaultTrustPolicy,
  BROKER_USER,
  MOTO_ACCOUNT_ID,
  type Moto,
  type StaticCredentials,
} from "./moto.ts";
export { startRedis, type Redis } from "./redis.ts";
export { FatalError, ManagedProcess, freePort, waitFor } from "./process.ts";
export { ROOT, CACHE, VENV_BIN, NODE, KEYCUTTER_MAIN, versions, binary } from "./paths.ts";
export { makeServingCert, type TestPki } from "./tls.ts";
export { buildImageApp } from "./image-app.ts";
export { applyObjects, applyFiles, parseYamlObjects } from "./apply.ts";
export { FaultProxy, type FaultMode } from "./fault-proxy.ts";
export { ConfigMapVolume } from "./configmap-volume.ts";
