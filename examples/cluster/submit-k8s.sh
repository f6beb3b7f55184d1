#!/bin/bash
# Runs a split export on Kubernetes: the Indexed Job of parts, then (once it is complete) the
# finish Job. Kubernetes has no job dependencies, so this waits with kubectl.
set -euo pipefail
here=$(dirname "$0")
kubectl apply -f "$here/export-parts.yaml"
kubectl wait --for=condition=complete --timeout=24h job/ckpt-export-parts
kubectl apply -f "$here/export-finish.yaml"
kubectl wait --for=condition=complete --timeout=1h job/ckpt-export-finish
