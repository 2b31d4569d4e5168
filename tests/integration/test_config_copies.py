"""The primary's copies of tracked ConfigMaps and Secrets against a real kube-apiserver: written
only from content that is still the revision's, never over an object canarist does not own,
released and adopted with the primary."""

from __future__ import annotations

import base64

import kubernetes
import pytest

from canarist.kube.configcache import ConfigCache
from canarist.kube.configcopies import ConfigChanged, ConfigCopies, ForeignCopy
from canarist.kube.configtracking import ConfigRef, TrackedObject
from tests.integration.test_gatewayapi_routing import make_owner

pytestmark = pytest.mark.cluster


@pytest.fixture
def core(kube_client) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kube_client)


def observe(kube_client, namespace: str, *refs: ConfigRef) -> list[TrackedObject]:
    tracked, problems = ConfigCache().tracked(kube_client, namespace, "bot", list(refs))
    assert not problems, problems
    return tracked


def test_copies_carry_the_revisions_content_and_follow_promotions(kube_client, namespace, core):
    owner = make_owner(kube_client, namespace)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "prompts"}, "data": {"p": "Be exact."}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "key"}, "type": "Opaque",
                                              "stringData": {"k": "sk-1"}})
    copies = ConfigCopies(kube_client, namespace, "bot", owner)
    first = observe(kube_client, namespace, ConfigRef("ConfigMap", "prompts"), ConfigRef("Secret", "key"),
                    ConfigRef("ConfigMap", "maybe", optional=True))
    copies.write(first)
    copy = core.read_namespaced_config_map("prompts-primary", namespace)
    assert copy.data == {"p": "Be exact."} and copy.metadata.owner_references[0].uid == owner["uid"]
    assert base64.b64decode(core.read_namespaced_secret("key-primary", namespace).data["k"]) == b"sk-1"
    assert core.list_namespaced_config_map(namespace, field_selector="metadata.name=maybe-primary").items == []

    # The prompt changes after the revision was observed: nothing is written from the new content.
    core.patch_namespaced_config_map("prompts", namespace, {"data": {"p": "Round it."}})
    with pytest.raises(ConfigChanged):
        copies.write(first)
    assert core.read_namespaced_config_map("prompts-primary", namespace).data == {"p": "Be exact."}

    # The next revision (promotion) writes it; the optional object appeared and gets its copy too.
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "maybe"}, "data": {"x": "1"}})
    second = observe(kube_client, namespace, ConfigRef("ConfigMap", "prompts"), ConfigRef("Secret", "key"),
                     ConfigRef("ConfigMap", "maybe", optional=True))
    copies.write(second)
    assert core.read_namespaced_config_map("prompts-primary", namespace).data == {"p": "Round it."}
    assert core.read_namespaced_config_map("maybe-primary", namespace).data == {"x": "1"}
    # ... and once it is gone again, so is its copy.
    core.delete_namespaced_config_map("maybe", namespace)
    copies.write(observe(kube_client, namespace, ConfigRef("ConfigMap", "maybe", optional=True)))
    assert core.list_namespaced_config_map(namespace, field_selector="metadata.name=maybe-primary").items == []


def test_an_object_canarist_does_not_own_is_never_overwritten(kube_client, namespace, core):
    owner = make_owner(kube_client, namespace)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "prompts"}, "data": {"p": "new"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "prompts-primary"}, "data": {"mine": "1"}})
    with pytest.raises(ForeignCopy, match="ConfigMap 'prompts-primary' exists and is not managed by canarist"):
        ConfigCopies(kube_client, namespace, "bot", owner).write(
            observe(kube_client, namespace, ConfigRef("ConfigMap", "prompts")))
    assert core.read_namespaced_config_map("prompts-primary", namespace).data == {"mine": "1"}


def test_copies_are_released_with_a_kept_primary_and_adopted_by_the_next_release(kube_client, namespace, core):
    first, second = make_owner(kube_client, namespace, "first"), make_owner(kube_client, namespace, "second")
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "prompts"}, "data": {"p": "a"}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "key"}, "stringData": {"k": "v"}})
    tracked = observe(kube_client, namespace, ConfigRef("ConfigMap", "prompts"), ConfigRef("Secret", "key"))
    ConfigCopies(kube_client, namespace, "bot", first).write(tracked)
    ConfigCopies(kube_client, namespace, "bot", first).release()
    for read in (core.read_namespaced_config_map, core.read_namespaced_secret):
        assert not read(("prompts" if read == core.read_namespaced_config_map else "key") + "-primary",
                        namespace).metadata.owner_references
    later = ConfigCopies(kube_client, namespace, "bot", second)
    later.adopt()
    assert [o.uid for o in core.read_namespaced_config_map("prompts-primary", namespace).metadata.owner_references] \
        == [second["uid"]]
    assert [o.uid for o in core.read_namespaced_secret("key-primary", namespace).metadata.owner_references] \
        == [second["uid"]]
    later.write(tracked)  # its own now: written without complaint
    # Another target's release never takes them.
    ConfigCopies(kube_client, namespace, "other", make_owner(kube_client, namespace, "third")).adopt()
    assert [o.uid for o in core.read_namespaced_config_map("prompts-primary", namespace).metadata.owner_references] \
        == [second["uid"]]
