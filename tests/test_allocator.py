"""train/allocator.py: after keep_freed_memory(), a training step reuses the memory the previous step freed
instead of unmapping it and faulting it in again (the page-fault churn that made CPU training steps slow)."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

# a conv forward + backward at the default towers' first-layer size: activations of ~51 MB each, above
# glibc's largest mmap threshold (32 MB); minor page faults counted per step
_STEPS = r"""
import json, resource, sys, torch
from fgresq_sdk.train.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
torch.manual_seed(0)
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(32, 32, 3, padding=1))
x = torch.randn(8, 3, 224, 224)
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net(x).square().mean().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def _faults_per_step(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, timeout=180, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(v: list[int]) -> float:
    v = sorted(v)
    return (v[len(v) // 2] + v[(len(v) - 1) // 2]) / 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_training_steps_reuse_freed_memory():
    from fgresq_sdk.train.allocator import keep_freed_memory

    if not keep_freed_memory().startswith("glibc"):
        pytest.skip("not glibc's malloc")
    activation_pages = 8 * 32 * 224 * 224 * 4 // 4096
    default, kept = _faults_per_step("default"), _faults_per_step("keep")
    # steps after the first two (warm-up: weights, grads, the heap's first growth)
    d, k = _median(default[2:]), _median(kept[2:])
    assert d > activation_pages  # control: by default every step faults its activations in again
    assert k < d / 4, (default, kept)
