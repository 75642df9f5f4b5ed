"""cluster.yaml is a real Ray autoscaler config: it passes Ray's own schema validation (the
same prepare + validate path `ray up` runs), and a broken copy does not."""
import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tagi_ray.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster.yaml"


@pytest.fixture()
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_is_valid_for_ray(cluster):
    prepared = prepare_config(copy.deepcopy(cluster))  # defaults merged, as `ray up` does
    validate_config(prepared)
    types = cluster["available_node_types"]
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types and cluster["head_node_type"] not in gpu_types
    assert all(t["node_config"]["ImageId"] and t["node_config"]["InstanceType"] for t in types.values())
    assert sum(t.get("max_workers", 0) for n, t in types.items() if n != cluster["head_node_type"]) \
        <= cluster["max_workers"]
    # the synced checkout is installed on every node, and started Ray uses that environment
    assert "." in cluster["file_mounts"].values()
    project_dir = next(remote for remote, local in cluster["file_mounts"].items() if local == ".")
    assert any("pip install" in c and '-e ".' in c and Path(project_dir).name in c for c in cluster["setup_commands"])
    assert prepared["worker_setup_commands"][:len(cluster["setup_commands"])] == cluster["setup_commands"]
    for cmds in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        assert any("ray start" in c and "venv" in c for c in cmds)


def test_cluster_mounts_the_presets_shared_storage(cluster):
    """Workers read the base and write teachers/checkpoints by path: the GPU presets' run and data
    directories must be on the file system every node mounts."""
    shared = "/mnt/shared"
    mount = next(c for c in cluster["initialization_commands"] if "mount -t nfs" in c)
    assert f":/ {shared})" in mount  # <file system>:/ mounted at /mnt/shared on every node
    for preset in ("t5-base-sni.yaml", "llama-1b-sni.yaml"):
        cfg = load_config(ROOT / "configs" / preset)
        assert cfg.ray.use_gpu
        assert cfg.train.out_dir.startswith(shared + "/") and cfg.data.source.startswith(shared + "/")


@pytest.mark.parametrize("breakage, message", [
    ("unknown_key", "'resourcez' was unexpected"),
    ("top_level_typo", "'setup_comands' was unexpected"),
    ("wrong_type", "'many' is not of type 'integer'"),
    ("bad_head", "must be one of `available_node_types`"),
    ("no_resources", "'resources' is a required property"),
])
def test_broken_cluster_yaml_is_rejected(cluster, breakage, message):
    broken = copy.deepcopy(cluster)
    if breakage == "unknown_key":
        broken["available_node_types"]["gpu_a10g"]["resourcez"] = {"GPU": 1}
    elif breakage == "top_level_typo":
        broken["setup_comands"] = broken.pop("setup_commands")
    elif breakage == "wrong_type":
        broken["max_workers"] = "many"
    elif breakage == "bad_head":
        broken["head_node_type"] = "no_such_type"
    else:
        del broken["available_node_types"]["gpu_a10g"]["resources"]
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(message)):
        validate_config(prepare_config(broken))
