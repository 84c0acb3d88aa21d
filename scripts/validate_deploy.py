"""Validates everything under deploy/ offline; run by scripts/validate_deploy.sh inside .venv-deploy.

- deploy/k8s/base: rendered with `kubectl kustomize` when kubectl is installed, else by the small renderer below
  (namespace, labels, images: the only kustomize features the base uses); every rendered object is validated
  strictly (unknown fields fail) against the Kubernetes JSON schemas bundled in kubernetes-validate.
- deploy/sedna: Sedna resources against deploy/sedna/schemas (written from Sedna's v1alpha1 API), their pod
  templates against Kubernetes' PodTemplateSpec, the rest against the Kubernetes schemas.
- Project rules the schemas cannot express: non-root, read-only, unprivileged containers; probes on services;
  Secrets holding placeholders only.
- deploy/docker: parsed with dockerfile-parse (non-root USER, HEALTHCHECK, where the libraries are), linted with
  hadolint.
- Negative checks: deliberately broken copies must fail, so a validator that silently passes everything is caught.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# The oldest Kubernetes a KubeEdge release of today supports, and the newest schemas bundled.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
SEDNA_SCHEMAS = {
    "JointInferenceService": "jointinferenceservice.schema.json",
    "LifelongLearningJob": "lifelonglearningjob.schema.json",
    "Model": "model.schema.json",
    "Dataset": "dataset.schema.json",
}
PLACEHOLDER = "REPLACE-ME"
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob"}


class Invalid(Exception):
    pass


def load_documents(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# --- kustomize ---------------------------------------------------------------------------------------------------


def render_kustomization(directory):
    """Returns (objects, how): kubectl's rendering when kubectl exists, else our own."""
    # KUBECTL=none forces the built-in renderer (to test it); KUBECTL=/path picks a kubectl.
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if kubectl and kubectl != "none":
        result = subprocess.run(
            [kubectl, "kustomize", str(directory)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise Invalid(f"kubectl kustomize {directory}: {result.stderr.strip()}")
        rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
        # Keep the fallback honest: it must produce what kustomize produces.
        ours = render_kustomization_ourselves(directory)
        if sorted(map(identity, ours)) != sorted(map(identity, rendered)):
            raise Invalid(f"the built-in renderer disagrees with kubectl kustomize on {directory}")
        return rendered, "kubectl kustomize (built-in renderer agrees)"
    return render_kustomization_ourselves(directory), "built-in renderer (no kubectl)"


def identity(obj):
    """What must match between renderings: kind, name, namespace, labels and images."""
    images = sorted(c.get("image", "") for c in containers_of(obj))
    labels = sorted(obj.get("metadata", {}).get("labels", {}).items())
    return json.dumps([obj["kind"], obj["metadata"].get("name"), obj["metadata"].get("namespace"), labels, images])


def render_kustomization_ourselves(directory):
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    known = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
    unknown = set(kustomization) - known
    if unknown:
        raise Invalid(f"the built-in renderer does not handle {sorted(unknown)}; install kubectl")
    objects = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if not path.is_file():
            raise Invalid(f"kustomization resource {resource} is missing")
        objects.extend(load_documents(path))
    images = {image["name"]: image for image in kustomization.get("images", [])}
    for obj in objects:
        metadata = obj.setdefault("metadata", {})
        if "namespace" in kustomization and obj["kind"] != "Namespace":
            metadata["namespace"] = kustomization["namespace"]
        for label_set in kustomization.get("labels", []):
            metadata.setdefault("labels", {}).update(label_set.get("pairs", {}))
        for container in containers_of(obj):
            image = images.get(container.get("image"))
            if image:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return objects


# --- Kubernetes objects ------------------------------------------------------------------------------------------


def pod_spec_of(obj):
    kind = obj.get("kind")
    spec = obj.get("spec", {})
    if kind == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    if kind in WORKLOAD_KINDS:
        return spec.get("template", {}).get("spec")
    if kind == "PodTemplate":
        return obj.get("template", {}).get("spec")
    return None


def containers_of(obj):
    spec = pod_spec_of(obj) or {}
    return spec.get("initContainers", []) + spec.get("containers", [])


def validate_kubernetes(obj, where):
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            raise Invalid(f"{where}: {name_of(obj)} (Kubernetes {version}) at {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            raise Invalid(f"{where}: {name_of(obj)}: no Kubernetes {version} schema: {error}")


def check_rules(obj, where):
    """What this project promises in docs/security.md, checked on every workload."""
    what = f"{where}: {name_of(obj)}"
    if obj.get("kind") == "Secret":
        for key, value in (obj.get("stringData") or {}).items():
            if PLACEHOLDER not in str(value):
                raise Invalid(f"{what}: {key} is not a {PLACEHOLDER} placeholder; never commit real secrets")
        if obj.get("data"):
            raise Invalid(f"{what}: use stringData placeholders, not data")
    spec = pod_spec_of(obj)
    if spec is None:
        return
    pod_security = spec.get("securityContext", {})
    if spec.get("automountServiceAccountToken") is not False:
        raise Invalid(f"{what}: set automountServiceAccountToken: false (no container needs the API)")
    for container in containers_of(obj):
        security = container.get("securityContext", {})
        cname = f"{what} container {container.get('name')}"
        if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
            raise Invalid(f"{cname}: runAsNonRoot is not set")
        if security.get("allowPrivilegeEscalation") is not False:
            raise Invalid(f"{cname}: allowPrivilegeEscalation must be false")
        if security.get("readOnlyRootFilesystem") is not True:
            raise Invalid(f"{cname}: readOnlyRootFilesystem must be true")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            raise Invalid(f"{cname}: capabilities must drop ALL")
    if obj.get("kind") in {"Deployment", "DaemonSet"}:
        for container in spec.get("containers", []):
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in container:
                    raise Invalid(f"{what} container {container.get('name')}: no {probe}")


def check_environment_names(objects, where):
    """Every variable our containers get must be one the binaries read (docs/configuration.md is generated from
    their --help), so a misspelt name in a manifest fails here instead of being silently ignored in production."""
    documented = (ROOT / "docs/configuration.md").read_text()
    sources = {}
    for obj in objects:
        if obj.get("kind") in {"ConfigMap", "Secret"}:
            keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
            sources[(obj["kind"], obj["metadata"]["name"])] = keys
    for obj in objects:
        for container in containers_of(obj):
            names = {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if ref in source:
                        key = (kind, source[ref]["name"])
                        if key not in sources:
                            raise Invalid(f"{where}: {name_of(obj)} reads {kind} {key[1]}, which is not defined")
                        names |= sources[key]
            for name in sorted(names):
                if not re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", documented):
                    raise Invalid(
                        f"{where}: {name_of(obj)} container {container.get('name')} sets {name}, "
                        "which no binary reads (not in docs/configuration.md)"
                    )


# --- Sedna -------------------------------------------------------------------------------------------------------


def sedna_pod_templates(obj):
    spec = obj.get("spec", {})
    if obj["kind"] == "JointInferenceService":
        return {f"{w}.template": spec.get(w, {}).get("template") for w in ("edgeWorker", "cloudWorker")}
    if obj["kind"] == "LifelongLearningJob":
        return {f"{s}.template": spec.get(s, {}).get("template") for s in ("trainSpec", "evalSpec", "deploySpec")}
    return {}


def validate_sedna(obj, where):
    schema = json.loads((DEPLOY / "sedna/schemas" / SEDNA_SCHEMAS[obj["kind"]]).read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        path = "/".join(str(p) for p in first.path)
        raise Invalid(f"{where}: {name_of(obj)} (Sedna schema) at {path}: {first.message}")
    for field, template in sedna_pod_templates(obj).items():
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{obj['metadata']['name']}-{field.split('.')[0].lower()}"},
            "template": template,
        }
        validate_kubernetes(pod_template, f"{where} {name_of(obj)} {field}")
        check_rules(pod_template, f"{where} {name_of(obj)} {field}")
    if obj["kind"] == "JointInferenceService":
        check_hard_example_mining(obj, where)


def check_hard_example_mining(obj, where):
    """The miner names and parameters edge-infer accepts from Sedna (hard-example crate, MinerConfig::from_sedna)."""
    mining = obj["spec"]["edgeWorker"]["hardExampleMining"]
    accepted = {
        "CrossEntropy": {"threshold_cross_entropy"},
        "IBT": {"threshold_img", "threshold_box"},
    }
    keys = {p["key"] for p in mining.get("parameters", [])}
    allowed = accepted.get(mining["name"])
    if allowed is not None and not keys <= allowed:
        raise Invalid(f"{where}: hardExampleMining {mining['name']} does not take {sorted(keys - allowed)}")
    for parameter in mining.get("parameters", []):
        try:
            float(parameter["value"])
        except ValueError:
            raise Invalid(f"{where}: hardExampleMining parameter {parameter['key']} is not a number")


# --- Dockerfiles -------------------------------------------------------------------------------------------------


def check_dockerfile(path, service_port):
    parser = DockerfileParser(path=str(path))
    stages = [i for i, ins in enumerate(parser.structure) if ins["instruction"] == "FROM"]
    if len(stages) < 2:
        raise Invalid(f"{path.name}: expected a multi-stage build")
    final = parser.structure[stages[-1]:]
    user = [ins["value"].split(":")[0] for ins in final if ins["instruction"] == "USER"]
    if not user or user[-1] in {"0", "root"}:
        raise Invalid(f"{path.name}: the runtime stage must switch to a non-root USER")
    env = parser.envs
    if "ORT_DYLIB_PATH" not in env:
        raise Invalid(f"{path.name}: ORT_DYLIB_PATH is not set")
    has_libtorch = "LIBTORCH" in env
    if has_libtorch != (path.name == "trainer.Dockerfile"):
        raise Invalid(f"{path.name}: libtorch belongs in the trainer image only")
    healthchecks = [ins["value"] for ins in final if ins["instruction"] == "HEALTHCHECK"]
    if service_port is not None:
        if not healthchecks or f":{service_port}/health" not in healthchecks[-1]:
            raise Invalid(f"{path.name}: no HEALTHCHECK on :{service_port}/health")
    for ins in final:
        if ins["instruction"] == "COPY" and ins["value"].split()[0] in {".", "./"}:
            raise Invalid(f"{path.name}: the runtime stage must not copy the whole context")


def hadolint(paths):
    binary = shutil.which("hadolint")
    if not binary:
        raise Invalid("hadolint is not installed in the validation venv")
    result = subprocess.run(
        [binary, "--no-color", "--config", str(DEPLOY / "docker/hadolint.yaml"), *map(str, paths)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise Invalid(f"hadolint:\n{result.stdout}{result.stderr}")


# --- the run -----------------------------------------------------------------------------------------------------


def validate_tree(deploy):
    """Validates one deploy/ tree; returns a summary line per part. Raises Invalid on the first problem."""
    summary = []
    objects, how = render_kustomization(deploy / "k8s/base")
    for obj in objects:
        validate_kubernetes(obj, "k8s/base")
        check_rules(obj, "k8s/base")
    check_environment_names(objects, "k8s/base")
    kinds = sorted({o["kind"] for o in objects})
    summary.append(f"k8s/base: {len(objects)} objects rendered by {how}, valid ({', '.join(kinds)})")

    sedna_count = other_count = 0
    sedna_objects = []
    for path in sorted((deploy / "sedna").glob("*.yaml")):
        for obj in load_documents(path):
            sedna_objects.append(obj)
            where = f"sedna/{path.name}"
            if obj.get("apiVersion", "").startswith("sedna.io/"):
                if obj.get("kind") not in SEDNA_SCHEMAS:
                    raise Invalid(f"{where}: no schema for Sedna kind {obj.get('kind')}")
                validate_sedna(obj, where)
                sedna_count += 1
            else:
                validate_kubernetes(obj, where)
                check_rules(obj, where)
                other_count += 1
    # Sedna's pod templates as PodTemplates, so their containers are checked like the others.
    templates = [
        {"kind": "PodTemplate", "metadata": {"name": f"{o['metadata']['name']}-{field}"}, "template": template}
        for o in sedna_objects
        if o.get("apiVersion", "").startswith("sedna.io/")
        for field, template in sedna_pod_templates(o).items()
    ]
    check_environment_names(sedna_objects + templates, "sedna")
    summary.append(f"sedna: {sedna_count} Sedna resources and {other_count} Kubernetes objects valid")

    dockerfiles = {"edge-infer.Dockerfile": 8080, "cloud-infer.Dockerfile": 8090, "trainer.Dockerfile": None}
    for name, port in dockerfiles.items():
        check_dockerfile(deploy / "docker" / name, port)
    hadolint([deploy / "docker" / name for name in dockerfiles])
    summary.append(f"docker: {len(dockerfiles)} Dockerfiles pass the checks and hadolint")
    return summary


def break_copy(mutate):
    """A copy of deploy/ with one deliberate fault; returns the temp dir."""
    tmp = Path(tempfile.mkdtemp(prefix="validate-deploy-"))
    shutil.copytree(DEPLOY, tmp / "deploy")
    mutate(tmp / "deploy")
    return tmp


def edit_yaml(path, change):
    docs = load_documents(path)
    change(docs)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def negative_checks():
    def replicas_as_text(deploy):
        def change(docs):
            docs[0]["spec"]["replicas"] = "two"
        edit_yaml(deploy / "k8s/base/cloud-infer.yaml", change)

    def probe_typo(deploy):
        def change(docs):
            container = docs[0]["spec"]["template"]["spec"]["containers"][0]
            container["readinesProbe"] = container.pop("readinessProbe")
        edit_yaml(deploy / "k8s/base/edge-infer.yaml", change)

    def no_hard_example_mining(deploy):
        def change(docs):
            del docs[0]["spec"]["edgeWorker"]["hardExampleMining"]
        edit_yaml(deploy / "sedna/joint-inference-service.yaml", change)

    def trigger_without_condition(deploy):
        def change(docs):
            job = next(d for d in docs if d["kind"] == "LifelongLearningJob")
            del job["spec"]["trainSpec"]["trigger"]["condition"]
        edit_yaml(deploy / "sedna/lifelong-learning-job.yaml", change)

    def real_looking_secret(deploy):
        def change(docs):
            docs[0]["stringData"]["CLOUD_INFER_TOKENS"] = "d41d8cd98f00b204e9800998ecf8427e"
        edit_yaml(deploy / "k8s/base/secrets.yaml", change)

    def runs_as_root(deploy):
        path = deploy / "docker/edge-infer.Dockerfile"
        path.write_text(path.read_text().replace("USER 10001:10001", "USER root"))

    def misspelt_variable(deploy):
        def change(docs):
            env = docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
            next(e for e in env if e["name"] == "EDGE_CLOUD_URL")["name"] = "EDGE_CLOUD_ULR"
        edit_yaml(deploy / "k8s/base/edge-infer.yaml", change)

    def missing_resource(deploy):
        (deploy / "k8s/base/retrain-cronjob.yaml").unlink()

    cases = [
        replicas_as_text,
        probe_typo,
        no_hard_example_mining,
        trigger_without_condition,
        real_looking_secret,
        runs_as_root,
        misspelt_variable,
        missing_resource,
    ]
    for case in cases:
        tmp = break_copy(case)
        try:
            validate_tree(tmp / "deploy")
        except Invalid as error:
            print(f"  negative check {case.__name__}: rejected as it should be ({str(error).splitlines()[0][:110]})")
        else:
            raise Invalid(f"negative check {case.__name__}: a broken copy PASSED validation")
        finally:
            shutil.rmtree(tmp)
    return len(cases)


def main():
    try:
        for line in validate_tree(DEPLOY):
            print(f"validate-deploy: {line}")
        count = negative_checks()
        print(f"validate-deploy: {count} deliberately broken copies were all rejected")
    except Invalid as error:
        print(f"validate-deploy: FAILED: {error}", file=sys.stderr)
        return 1
    print("validate-deploy: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
