#!/usr/bin/env python3
"""Checks rendered manifests offline: core objects against the Kubernetes schemas
(kubernetes-validate, strict), InferencePool and PodMonitor against our JSON schemas
(deploy/schemas/), plus what the gateway relies on (labels, probes, port, requests = limits).
Then it checks that it can fail: each of a few broken copies must be rejected.

Usage: validate.py RENDERED.yaml [RENDERED.yaml ...]   (the output of `kubectl kustomize`)
"""
import copy
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.37.0"
HERE = pathlib.Path(__file__).parent
SCHEMAS = {
    "InferencePool": json.loads((HERE / "schemas/inferencepool-v1.json").read_text()),
    "PodMonitor": json.loads((HERE / "schemas/podmonitor-v1.json").read_text()),
}
GATEWAY_LABELS = {
    "llm-d.ai/inference-serving": "true",
    "llm-d.ai/engine-type": "vllm",
}


def check(doc):
    """Raises on the first problem of one object."""
    kind = doc.get("kind")
    if kind in SCHEMAS:
        jsonschema.validate(doc, SCHEMAS[kind])
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    if kind == "Deployment":
        pod = doc["spec"]["template"]
        labels = pod["metadata"]["labels"]
        for k, v in GATEWAY_LABELS.items():
            assert labels.get(k) == v, f"pod label {k}={v!r} missing"
        assert labels.get("llm-d.ai/model"), "pod label llm-d.ai/model missing"
        (c,) = [c for c in pod["spec"]["containers"] if c["name"] == "cordial"]
        args = c["args"]
        assert args[0] == "serve" and args[args.index("--host") + 1] == "0.0.0.0", args
        assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in c["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["path"] == "/health", probe
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "startup < 5 min"
        assert c["resources"]["requests"] == c["resources"]["limits"], "requests != limits"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    if kind == "InferencePool":
        assert doc["spec"]["targetPorts"] == [{"number": 8000}]


def validate(docs):
    kinds = []
    for doc in docs:
        check(doc)
        kinds.append(doc["kind"])
    return kinds


def broken(docs):
    """Copies that must fail, each with one mistake."""
    def edit(kind, f):
        out = copy.deepcopy(docs)
        for d in out:
            if d["kind"] == kind:
                f(d)
        return out

    def container(d):
        return d["spec"]["template"]["spec"]["containers"][0]

    cases = {
        "Deployment: a port as a string": lambda d: container(d)["ports"][0].update(
            containerPort="8000"),
        "Deployment: an unknown field": lambda d: container(d).update(startupprobe={}),
        "Deployment: requests != limits": lambda d: container(d)["resources"]["limits"].update(
            memory="8Gi"),
        "Deployment: no engine-type label": lambda d: d["spec"]["template"]["metadata"][
            "labels"].pop("llm-d.ai/engine-type"),
        "Service: a port as a string": lambda d: d["spec"]["ports"][0].update(port="8000"),
        "Service: an unknown field": lambda d: d["spec"].update(selectors={}),
        "PodMonitor: no endpoints": lambda d: d["spec"].update(podMetricsEndpoints=[]),
        "PodMonitor: bad interval": lambda d: d["spec"]["podMetricsEndpoints"][0].update(
            interval="fast"),
        "InferencePool: no targetPorts": lambda d: d["spec"].pop("targetPorts"),
        "InferencePool: nine ports": lambda d: d["spec"].update(
            targetPorts=[{"number": 8000 + i} for i in range(9)]),
        "InferencePool: bad failureMode": lambda d: d["spec"]["endpointPickerRef"].update(
            failureMode="Maybe"),
        "InferencePool: a Service ref without a port": lambda d: d["spec"][
            "endpointPickerRef"].pop("port"),
    }
    present = {d["kind"] for d in docs}
    for name, f in cases.items():
        if name.split(":")[0] in present:
            yield name, edit(name.split(":")[0], f)


def main():
    for path in sys.argv[1:]:
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        print(f"{path}: {', '.join(validate(docs))} valid")
        for name, bad in broken(docs):
            try:
                validate(bad)
            except Exception:  # noqa: BLE001 - any rejection counts (AssertionError included)
                continue
            sys.exit(f"{path}: the broken copy '{name}' was accepted")
        print(f"{path}: every broken copy rejected")


if __name__ == "__main__":
    main()
