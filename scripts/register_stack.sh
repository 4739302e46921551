#!/usr/bin/env bash
# Register tuneline's remote ZenML stack: Kubernetes orchestrator, S3 or GCS artifact store,
# container registry, image builder (Kaniko in the cluster, or the local Docker engine), and the
# credentials they need as ZenML secrets (or Kubernetes Secrets for the Kaniko pod). Idempotent:
# existing components are updated. Walkthrough: docs/kubernetes.md.
#
#   export ZENML_STORE_URL=https://zenml.example.com ZENML_STORE_API_KEY=...   # or: zenml login URL
#   export K8S_CONTEXT=my-cluster ARTIFACT_STORE_URI=s3://my-bucket/tuneline \
#          REGISTRY_URI=123456789012.dkr.ecr.eu-west-1.amazonaws.com/ml
#   scripts/register_stack.sh
#
# Settings (environment):
#   K8S_CONTEXT          kubeconfig context of the cluster (required)
#   K8S_NAMESPACE        namespace of the pipeline pods (default tuneline: k8s/base/pipelines)
#   ARTIFACT_STORE_URI   s3://bucket/prefix or gs://bucket/prefix (required)
#   REGISTRY_URI         container registry the images are pushed to and pulled from (required)
#   IMAGE_BUILDER        kaniko (default: builds in the cluster, needs kubectl) or local (needs Docker)
#   STACK_NAME           default tuneline-k8s (also the prefix of the component and secret names)
#   KANIKO_IMAGE         Kaniko executor image, by digest (default: v1.24.0, the final upstream release;
#                        docs/kubernetes.md "Images by digest")
# Credentials, each optional, read from the environment and never written to a command line
# (they go through a mode-600 temporary file that is removed on exit):
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY[, AWS_SESSION_TOKEN]  S3; without them the pods use
#       their service account's workload identity (IRSA) and the client its own AWS config
#   GOOGLE_APPLICATION_CREDENTIALS  path of a GCS service-account key file; without it, workload identity
#   REGISTRY_USERNAME, REGISTRY_PASSWORD  registry login; without them, node/cloud credentials
set -euo pipefail

: "${K8S_CONTEXT:?set K8S_CONTEXT to the kubeconfig context of the cluster}"
: "${ARTIFACT_STORE_URI:?set ARTIFACT_STORE_URI to s3://bucket/prefix or gs://bucket/prefix}"
: "${REGISTRY_URI:?set REGISTRY_URI to the container registry, e.g. registry.example.com/ml}"
K8S_NAMESPACE=${K8S_NAMESPACE:-tuneline}
IMAGE_BUILDER=${IMAGE_BUILDER:-kaniko}
STACK_NAME=${STACK_NAME:-tuneline-k8s}
KANIKO_IMAGE=${KANIKO_IMAGE:-gcr.io/kaniko-project/executor:v1.24.0@sha256:4e7a52dd1f14872430652bb3b027405b8dfd17c4538751c620ac005741ef9698}
ORCHESTRATOR="$STACK_NAME-orchestrator"
ARTIFACT_STORE="$STACK_NAME-artifacts"
REGISTRY="$STACK_NAME-registry"
BUILDER="$STACK_NAME-builder"

TMP=$(mktemp -d)
chmod 700 "$TMP"
trap 'rm -rf "$TMP"' EXIT

log() { echo "register_stack: $*" >&2; }

# register_or_update TYPE NAME ARGS...: `zenml TYPE register NAME ARGS` or, if it exists, `update`.
register_or_update() {
    local type=$1 name=$2
    shift 2
    if zenml "$type" describe "$name" >/dev/null 2>&1; then
        log "updating $type $name"
        zenml "$type" update "$name" "$@"
    else
        log "registering $type $name"
        zenml "$type" register "$name" "$@"
    fi
}

# zenml_secret NAME KEY=ENVVAR...: a ZenML secret from environment variables, values via a file.
zenml_secret() {
    local name=$1
    shift
    local file="$TMP/$name.json"
    python3 - "$file" "$@" <<'PY'
import json, os, sys
path, pairs = sys.argv[1], sys.argv[2:]
values = {key: os.environ[var] for key, var in (p.split("=", 1) for p in pairs) if os.environ.get(var)}
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump(values, f)
PY
    if zenml secret get "$name" >/dev/null 2>&1; then
        log "updating ZenML secret $name"
        zenml secret update "$name" --values="@$file"
    else
        log "creating ZenML secret $name"
        zenml secret create "$name" --values="@$file"
    fi
    rm -f "$file"
}

# 1. Orchestrator. pass_zenml_token_as_secret: the API token reaches pods (and a schedule's CronJob)
#    through a Kubernetes Secret + secretKeyRef, never as a literal env value in a manifest.
register_or_update orchestrator "$ORCHESTRATOR" \
    --flavor=kubernetes \
    --kubernetes_context="$K8S_CONTEXT" \
    --kubernetes_namespace="$K8S_NAMESPACE" \
    --pass_zenml_token_as_secret=True \
    --service_account_name=zenml-orchestrator \
    --step_pod_service_account_name=zenml-step

# 2. Artifact store (+ its credentials as a ZenML secret, when given).
case "$ARTIFACT_STORE_URI" in
    s3://*)
        store_args=(--flavor=s3 --path="$ARTIFACT_STORE_URI")
        if [ -n "${AWS_ACCESS_KEY_ID:-}" ] && [ -n "${AWS_SECRET_ACCESS_KEY:-}" ]; then
            zenml_secret "$ARTIFACT_STORE" aws_access_key_id=AWS_ACCESS_KEY_ID \
                aws_secret_access_key=AWS_SECRET_ACCESS_KEY aws_session_token=AWS_SESSION_TOKEN
            store_args+=(--authentication_secret="$ARTIFACT_STORE")
        else
            log "no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: S3 access through workload identity"
        fi
        ;;
    gs://*)
        store_args=(--flavor=gcp --path="$ARTIFACT_STORE_URI")
        if [ -n "${GOOGLE_APPLICATION_CREDENTIALS:-}" ]; then
            GCP_TOKEN=$(cat "$GOOGLE_APPLICATION_CREDENTIALS")
            export GCP_TOKEN
            zenml_secret "$ARTIFACT_STORE" token=GCP_TOKEN
            unset GCP_TOKEN
            store_args+=(--authentication_secret="$ARTIFACT_STORE")
        else
            log "no GOOGLE_APPLICATION_CREDENTIALS: GCS access through workload identity"
        fi
        ;;
    *)
        echo "register_stack: ARTIFACT_STORE_URI must start with s3:// or gs://, not $ARTIFACT_STORE_URI" >&2
        exit 1
        ;;
esac
register_or_update artifact-store "$ARTIFACT_STORE" "${store_args[@]}"

# 3. Container registry.
registry_args=(--flavor=default --uri="$REGISTRY_URI")
if [ -n "${REGISTRY_USERNAME:-}" ] && [ -n "${REGISTRY_PASSWORD:-}" ]; then
    zenml_secret "$REGISTRY" username=REGISTRY_USERNAME password=REGISTRY_PASSWORD
    registry_args+=(--authentication_secret="$REGISTRY")
fi
register_or_update container-registry "$REGISTRY" "${registry_args[@]}"

# 4. Image builder.
case "$IMAGE_BUILDER" in
    kaniko)
        builder_args=(--flavor=kaniko --kubernetes_context="$K8S_CONTEXT" --kubernetes_namespace="$K8S_NAMESPACE"
                      --executor_image="$KANIKO_IMAGE")
        if [ -n "${REGISTRY_USERNAME:-}" ] && [ -n "${REGISTRY_PASSWORD:-}" ]; then
            # The Kaniko pod pushes with a docker config mounted from a Kubernetes Secret.
            python3 - "$TMP/dockerconfig.json" <<'PY'
import base64, json, os, sys
host = os.environ["REGISTRY_URI"].split("/")[0]
auth = base64.b64encode(f"{os.environ['REGISTRY_USERNAME']}:{os.environ['REGISTRY_PASSWORD']}".encode()).decode()
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump({"auths": {host: {"auth": auth}}}, f)
PY
            kubectl --context "$K8S_CONTEXT" -n "$K8S_NAMESPACE" create secret generic "$REGISTRY" \
                --type=kubernetes.io/dockerconfigjson --from-file=.dockerconfigjson="$TMP/dockerconfig.json" \
                --dry-run=client -o yaml | kubectl --context "$K8S_CONTEXT" apply -f -
            rm -f "$TMP/dockerconfig.json"
            builder_args+=(
                --volumes="[{\"name\": \"docker-config\", \"secret\": {\"secretName\": \"$REGISTRY\", \"items\": [{\"key\": \".dockerconfigjson\", \"path\": \"config.json\"}]}}]"
                --volume_mounts='[{"name": "docker-config", "mountPath": "/kaniko/.docker"}]'
            )
        fi
        ;;
    local)
        builder_args=(--flavor=local)
        ;;
    *)
        echo "register_stack: IMAGE_BUILDER must be kaniko or local, not $IMAGE_BUILDER" >&2
        exit 1
        ;;
esac
register_or_update image-builder "$BUILDER" "${builder_args[@]}"

# 5. The stack, made active.
if zenml stack describe "$STACK_NAME" >/dev/null 2>&1; then
    log "updating stack $STACK_NAME"
    zenml stack update "$STACK_NAME" -o "$ORCHESTRATOR" -a "$ARTIFACT_STORE" -c "$REGISTRY" -i "$BUILDER"
else
    log "registering stack $STACK_NAME"
    zenml stack register "$STACK_NAME" -o "$ORCHESTRATOR" -a "$ARTIFACT_STORE" -c "$REGISTRY" -i "$BUILDER"
fi
zenml stack set "$STACK_NAME"
log "done: $STACK_NAME is active. Next (docs/kubernetes.md):"
log "  tuneline config merge configs/default.yaml configs/env/kubernetes.yaml -o build/kubernetes.yaml"
log "  zenml pipeline run pipelines.finetune.finetune -c build/kubernetes.yaml"
