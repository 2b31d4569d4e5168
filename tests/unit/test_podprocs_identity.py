"""What a pod's process learns about itself from its pod, as a kubelet and the downward API tell it."""

from __future__ import annotations

from kubernetes.client import V1Container, V1EnvVar, V1EnvVarSource, V1ObjectMeta, V1OwnerReference, V1Pod

from canarist.devstack.podprocs import container_env, image_tag, owner_deployment


def pod(name: str, owner: str | None, template_hash: str | None) -> V1Pod:
    labels = {"app": "web", **({"pod-template-hash": template_hash} if template_hash else {})}
    owners = [V1OwnerReference(api_version="apps/v1", kind="ReplicaSet", name=owner, uid="u")] if owner else None
    return V1Pod(metadata=V1ObjectMeta(name=name, namespace="shop", labels=labels, owner_references=owners))


def test_the_deployment_is_the_replicasets_name_without_the_template_hash():
    assert owner_deployment(pod("web-primary-5d8f7-abcde", "web-primary-5d8f7", "5d8f7")) == "web-primary"
    assert owner_deployment(pod("web-6c9-x", "web-6c9", "6c9")) == "web"
    # A bare pod, or a ReplicaSet not made by a Deployment: the pod's own name.
    assert owner_deployment(pod("solo", None, None)) == "solo"
    assert owner_deployment(pod("rs-abc", "hand-made", "zz")) == "rs-abc"


def test_the_revision_of_a_pod_without_canarists_variables_is_its_image_tag():
    assert image_tag("registry.test/web:v2") == "v2"
    assert image_tag("localhost:5000/web") == "latest", "a registry's port is not a tag"
    assert image_tag("web@sha256:abc") == "latest"


def test_literal_env_values_and_the_downward_apis_three_reach_the_process():
    container = V1Container(name="app", env=[
        V1EnvVar(name="CANARIST_VARIANT", value="primary"),
        V1EnvVar(name="FROM_SECRET", value_from=V1EnvVarSource()),  # no literal value: not set
    ])
    env = container_env(pod("web-primary-1-a", "web-primary-1", "1"), container, "10.244.128.7")
    assert env == {"CANARIST_VARIANT": "primary", "POD_NAME": "web-primary-1-a", "POD_NAMESPACE": "shop",
                   "POD_IP": "10.244.128.7"}


def test_env_from_configmaps_and_secrets_is_resolved_as_a_kubelet_does_and_missing_required_ones_stop_the_start():
    import pytest
    from kubernetes.client import (V1ConfigMapEnvSource, V1ConfigMapKeySelector, V1EnvFromSource,
                                   V1SecretEnvSource, V1SecretKeySelector)

    from canarist.devstack.podprocs import MissingConfig

    objects = {("ConfigMap", "prompts"): {"SYSTEM_PROMPT": "Be exact.", "STYLE": "short"},
               ("Secret", "keys"): {"API_KEY": "s3cret"}}
    container = V1Container(name="app", image="web:v1", env_from=[
        V1EnvFromSource(config_map_ref=V1ConfigMapEnvSource(name="prompts"), prefix="P_"),
        V1EnvFromSource(secret_ref=V1SecretEnvSource(name="absent", optional=True))], env=[
        V1EnvVar(name="PROMPT", value_from=V1EnvVarSource(
            config_map_key_ref=V1ConfigMapKeySelector(name="prompts", key="SYSTEM_PROMPT"))),
        V1EnvVar(name="KEY", value_from=V1EnvVarSource(secret_key_ref=V1SecretKeySelector(name="keys", key="API_KEY"))),
        V1EnvVar(name="MAYBE", value_from=V1EnvVarSource(
            config_map_key_ref=V1ConfigMapKeySelector(name="prompts", key="nope", optional=True)))])
    env = container_env(pod("web-1-a", "web-1", "1"), container, "10.244.128.9",
                        lambda kind, name: objects.get((kind, name)))
    assert env["PROMPT"] == "Be exact." and env["P_STYLE"] == "short" and env["KEY"] == "s3cret"
    assert "MAYBE" not in env and env["POD_IP"] == "10.244.128.9"
    container.env.append(V1EnvVar(name="NEED", value_from=V1EnvVarSource(
        config_map_key_ref=V1ConfigMapKeySelector(name="missing", key="k"))))
    with pytest.raises(MissingConfig, match="ConfigMap 'missing'"):
        container_env(pod("web-1-a", "web-1", "1"), container, "10.244.128.9", lambda kind, name: objects.get((kind, name)))
