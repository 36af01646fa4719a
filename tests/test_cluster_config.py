"""cluster.yaml is a valid Ray cluster launcher config (Ray's own JSON schema) with the shape vidx needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# NVIDIA GPU instance families on AWS (g4dn: T4, g5: A10G, g6: L4, g6e: L40S, p4d: A100, p5: H100, p5e: H200).
GPU_FAMILIES = ("g4dn.", "g5.", "g6.", "g6e.", "p4d.", "p4de.", "p5.", "p5e.", "p5en.")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


def test_cluster_yaml_validates_against_rays_schema(config: dict[str, Any]) -> None:
    jsonschema.validate(config, ray_schema())


def test_the_schema_check_catches_a_broken_config(config: dict[str, Any]) -> None:
    broken = {**config, "available_node_types": {**config["available_node_types"], "bad": {"resources": {"GPU": 1}}}}
    with pytest.raises(jsonschema.ValidationError, match="node_config"):
        jsonschema.validate(broken, ray_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "max_wokers": 3}, ray_schema())  # a misspelt key is refused


def test_cpu_head_and_autoscaling_gpu_workers_that_install_the_gpu_extra(config: dict[str, Any]) -> None:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu_types
    for t in gpu_types:
        assert t["resources"]["GPU"] >= 1
        assert t["node_config"]["InstanceType"].startswith(GPU_FAMILIES)
        assert t["min_workers"] < t["max_workers"]  # autoscaling, not a fixed pool
    setup = "\n".join(config["setup_commands"])
    assert "[gpu" in setup and "postgres" in setup
    assert any("--autoscaling-config" in c for c in config["head_start_ray_commands"])
    assert all("$RAY_HEAD_IP" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
