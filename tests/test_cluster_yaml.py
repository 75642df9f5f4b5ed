"""cluster.yaml is a real Ray autoscaler config: it passes Ray's own schema validation (the
same prepare + validate path `ray up` runs), and a broken copy does not."""
import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parent.parent / "cluster.yaml"


@pytest.fixture()
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_is_valid_for_ray(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))
    gpu_types = [n for n, t in cluster["available_node_types"].items() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types and cluster["head_node_type"] not in gpu_types
    assert any('pip install' in c and '-e "' in c for c in cluster["setup_commands"])
    assert "." in cluster["file_mounts"].values()


@pytest.mark.parametrize("breakage", ["unknown_key", "wrong_type", "bad_head"])
def test_broken_cluster_yaml_is_rejected(cluster, breakage):
    broken = copy.deepcopy(cluster)
    if breakage == "unknown_key":
        broken["available_node_types"]["gpu_a10g"]["resourcez"] = {"GPU": 1}
    elif breakage == "wrong_type":
        broken["max_workers"] = "many"
    else:
        broken["head_node_type"] = "no_such_type"
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(broken))
