// Validates prometheus-operator objects (monitoring.coreos.com/v1), read as a JSON array on
// stdin, against the operator's CRD schema as @kubernetes-models/prometheus-operator ships it
// compiled (5.0.1: the CRDs of prometheus-operator v0.90.1). Prints one line per object;
// exit status 1 when any object is invalid or of a kind it has no schema for.
import * as v1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

let input = "";
for await (const chunk of process.stdin) input += chunk;

let failed = false;
for (const obj of JSON.parse(input)) {
  const name = `${obj.kind}/${obj.metadata?.name}`;
  const Model = obj.apiVersion === "monitoring.coreos.com/v1" ? v1[obj.kind] : undefined;
  if (typeof Model !== "function") {
    console.log(`error ${name}: no schema for ${obj.apiVersion} ${obj.kind}`);
    failed = true;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`ok ${name}`);
  } catch (err) {
    console.log(`error ${name}: ${err.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
