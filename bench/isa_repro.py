"""Does training land on the same weights on CPUs with different vector ISAs? A fingerprint to compare machines.

Why: the default model's recipe is deterministic on one machine, but its run on an AVX2-only Zen 3 trained other
towers than on an AVX-512 Zen 4 (README, "Embedded default model"): float32 kernels that sum in another order
differ in the last bits, and 2,000 optimiser steps grow that. Pinning the libraries to one instruction set
(ATen's dispatch: ATEN_CPU_CAPABILITY; oneDNN: ONEDNN_MAX_CPU_ISA; MKL: MKL_CBWR) might make every x86 CPU that
has AVX2 compute the same sums. This script trains the default recipe's towers (fgresq-compact-cnn-ms2) for a
few AdamW steps with gradient clipping and the weight average, on seeded inputs, and prints the sha256 of the
weights beside the CPU, the ISA, the thread count and the pins in force. Equal hashes on two CPUs with the same
pins, torch build and threads mean training is portable there; the recipe can then set the pins.

    .venv/bin/python bench/isa_repro.py                 # as the machine dispatches by itself
    .venv/bin/python bench/isa_repro.py --pins avx2     # re-executes itself with the three AVX2 pins set
    .venv/bin/python bench/isa_repro.py --pins portable # the least each library offers: ATen's scalar-width
                                                        # default kernels, oneDNN at SSE4.1, MKL's COMPATIBLE path
    .venv/bin/python bench/isa_repro.py --pins cnr      # what "cpu_kernels": "portable" trains on (train/kernels.py):
                                                        # ATen at AVX2, oneDNN off, MKL COMPATIBLE,STRICT
    .venv/bin/python bench/isa_repro.py --pins avx2-cnr # the same with oneDNN's AVX2 convolutions kept (cheaper)
    .venv/bin/python bench/isa_repro.py --pins cnr --per-module zen3-cnr.json
                                   # where two CPUs part: one training step's hash per module output (in the
                                   # order they run), per gradient and per weight after the optimiser step
    .venv/bin/python bench/isa_repro.py --compare zen3-cnr.json intel-cnr.json
                                   # the first module, gradient and weight whose hashes differ, and how many do
    .venv/bin/python bench/isa_repro.py --pins avx2-cnr --emulate EPYC-Milan --steps 2
                                   # the same on an emulated AMD Zen 3 (qemu-user, `apt-get install qemu-user-static`):
                                   # what MKL and oneDNN choose from CPUID (vendor, ISA, caches) follows the model,
                                   # but MKL's COMPATIBLE branch is not emulated faithfully (table below); ~800x
                                   # slower (2 steps at 64²: 86 s vs 0.1 s), so compare short runs with native ones

Measured (defaults: 20 steps, batch 8, 224², 2 threads; torch 2.14.1+cu130; sha256 prefixes):

| CPU | unpinned | `--pins avx2` | `--pins portable` |
|---|---|---|---|
| AMD EPYC family 25 model 1 (Zen 3, AVX2 only), 2026-12-03 and -06 | b530c1f23f3dcfd0 (three times) | 1ce22b9cd8659e88 (twice) | 361bb4f8ab361c14 (24 s; unpinned 18 s) |
| Intel Xeon family 6 model 167 (AVX-512, VNNI, AMX), 2026-12-03 | 051b6e31ab1d6949 | **aa9f947cd488e585** | 503657042fda82ca |

| CPU | `--pins cnr` | `--pins avx2-cnr` |
|---|---|---|
| Intel Xeon family 6 model 167, 2026-12-04 | **d84cfaed1f279eb8** (21–24 s; unpinned 12 s) | **11646b4e65d436ce** (15–18 s)|
| Intel Xeon family 6 model 207 (AVX-512, AMX; the GPU machine's host), torch **2.11.0**+cu130, 2026-12-04 | **d84cfaed1f279eb8** (38 s) | **11646b4e65d436ce** (23 s); unpinned 051b6e31ab1d6949 |
| Intel Xeon family 6 model 207, 2 cores, torch 2.14.1 (bench/gpu_check.sh's step 4 in `--cpu` mode), 2026-12-04 | **d84cfaed1f279eb8** (23 s) | **11646b4e65d436ce** (15 s); unpinned 051b6e31ab1d6949 |
| AMD EPYC family 25 model 1 (Zen 3, AVX2 only), torch 2.14.1, 2026-12-06 | b8f61424d1ed6f5b (40 s) | 4b164375df3e7321 (25 s) |

The model-207 row (bench/results/h200-2026-12-04/isa_repro.jsonl) matches model 167 in all three columns, on
another Intel generation *and* another torch release: the hashes follow the CPU vendor's kernel choices, not the
torch build between 2.11 and 2.14.1. **The real Zen 3 (2026-12-06) prints other hashes than the Intels in every
column** — `cnr` and `avx2-cnr` too: MKL's COMPATIBLE branch with oneDNN off (or capped at AVX2) and ATen at AVX2
gives the same weights across Intel generations, not across vendors. What still differs is not identified (not
MKL's ISA cap, which leaves the Intel's hash alone; candidates: an instruction whose result is implementation-
defined, such as the rcpps/rsqrtps approximations, or a kernel whose blocking follows what MKL or ATen read from
CPUID).

Emulated (`--emulate`, qemu-user 7.2 TCG, 2026-12-04; `--steps 2 --size 64 --batch 4`, against the same run natively
on the Intel model 207; full-size runs take hours under TCG):

| pins | native Intel (AVX-512 host) | qemu Skylake-Client (Intel, AVX2) | qemu EPYC-Milan (AMD Zen 3) |
|---|---|---|---|
| `avx2` | 3040137a90b4ac29 | **3040137a90b4ac29** | 3b1517d45482149f |
| none | 87b585d7266a8e60 (AVX-512) | 3040137a90b4ac29 (= its avx2) | not run |
| `avx2-cnr` | d67a99445922779e | 5563361a587ce562 | 5563361a587ce562 |
| `cnr` | e173c6485226972b | 0c4aa469e60244e9 | 0c4aa469e60244e9 |

The same small runs natively on the real Zen 3 (2026-12-06, torch 2.14.1): `avx2` deb17cff51fa01ad, `cnr`
c03b25e60867a186, `avx2-cnr` bae65374d0c09b8e — neither the native Intel's nor the emulated Zen 3's.

What it shows: the emulator reproduces native arithmetic bit for bit where MKL runs its AVX2 branch (the `avx2`
row: emulated Intel = native Intel), and it reproduces the vendor split the real Zen 3 showed (MKL ignores
`MKL_CBWR=AVX2` on AMD: 3b15… ≠ 3040…). With MKL's COMPATIBLE branch (`cnr`, `avx2-cnr`) the emulated Intel and the
emulated AMD agree with each other but **not with the native Intel**: that branch runs something the emulator
computes differently from the hardware (an implementation-defined instruction such as the rcpps/rsqrtps
approximations would do it; not identified). So qemu cannot certify COMPATIBLE's portability — and if the cause is
such an instruction, real Intel and AMD could differ there too. The real Zen 3 answered it: they do (the cnr and
avx2-cnr rows above).

Both hashes stayed the same with MKL's own ISA cap lowered (MKL_ENABLE_INSTRUCTIONS=AVX2 or SSE4_2) and oneDNN capped
at AVX2, while MKL's branch alone moves them (cnr with MKL_CBWR=AVX2: 19877abf…, AUTO: 1aaf03d5…): under these
pins the weights do not follow what this CPU offers beyond AVX2. MKL documents its COMPATIBLE branch as the one
that gives the same results on Intel and non-Intel CPUs (its AVX2 branch is ignored on non-Intel ones, which
explains the table above); the real Zen 3's `cnr` hash (b8f61424…, not d84cfaed…) says that training as a whole
still differs between the vendors under it, and its `avx2-cnr` hash (4b164375…, not 11646b4e…) the same with
oneDNN's AVX2 convolutions kept.

Where the vendors part, module by module (`--per-module`, 2026-12-06): the Zen 3's files for `cnr`, `avx2-cnr`,
`avx2` and no pins are in bench/results/zen3-2026-12-06/ (one step at batch 8, 224², 2 threads, torch 2.14.1). On
the Zen 3 itself they show the tool works: `cnr` against `avx2-cnr` part at the first convolution
(image_tower.features.0: im2col against oneDNN), no pins against `avx2` at the first linear layer of the head (MKL's
branch). The next session on an Intel runs `--pins cnr --per-module intel-cnr.json` and `--compare
bench/results/zen3-2026-12-06/per-module-cnr.json intel-cnr.json`: the first differing forward entry names the
kernel that still follows the vendor under the portable pins.

So the AVX2 pins do **not** make training portable: the Intel prints another hash than the Zen 3 under the same
pins (on the Intel each pin alone also changes the hash: ATen 48c2a01b…, oneDNN ad827a28…, MKL 18c3ef2d…; on the
Zen 3 only MKL_CBWR did). What still differs is below the ISA (kernel blocking that follows cache sizes, or MKL's
branch choice by vendor); `--pins portable` was the last probe: the Zen 3 printed 361bb4f8… against the Intel's
503657042fda82ca…, so even the least each library offers does not make the two vendors agree (it costs 65.8 s
against 16.1 s on the Intel for the 20 steps, 24 s against 18 s on the Zen 3).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fgresq_sdk.train.kernels import PORTABLE_ENV, apply_in_process  # torch-free: imported before the re-exec

PIN_SETS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
            "portable": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"},
            # what a training config's "cpu_kernels": "portable" sets (train/kernels.py); oneDNN is switched off
            "cnr": dict(PORTABLE_ENV),
            # the cheap candidate: oneDNN's AVX2 convolutions kept, MKL (the linear layers) on its COMPATIBLE branch;
            # portable only if oneDNN's AVX2 kernels sum alike on every CPU (its blocking follows cache sizes)
            "avx2-cnr": {**PORTABLE_ENV, "ONEDNN_MAX_CPU_ISA": "AVX2"}}
# the variables reported (MKL_ENABLE_INSTRUCTIONS: MKL's own ISA cap, to show a pinned hash does not follow it)
PINS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")
EMULATED_ENV = "FGRESQ_ISA_REPRO_EMULATED"  # set by --emulate for the emulated process: the CPU model it runs as


def _seeded_training(threads: int, kernels: str):
    """The recipe's towers, seeded, with AdamW over their trainable weights and the seeded input generator: what
    every machine starts from, so that two machines' hashes differ only by their kernels."""
    import torch

    from fgresq_sdk.model import FGResQ

    apply_in_process(kernels)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = FGResQ("fgresq-compact-cnn-ms2").train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    return model, params, opt, torch.Generator().manual_seed(1)


def _forward_loss(model, gen, batch: int, size: int):
    """One seeded batch through both heads: (features, scores, comparison logits, loss: fidelity + 3-way)."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(batch, 3, size, size, generator=gen)
    target = torch.rand(batch, generator=gen)
    q = model.quality_features(x)
    score = model.score_from_features(q)
    half = batch // 2
    logits = model.compare_logits(q[:half], q[half:2 * half])
    label = (target[:half] < target[half:2 * half]).long()
    return q, score, logits, F.mse_loss(score, target) + F.cross_entropy(logits, label)


def fingerprint(steps: int, batch: int, size: int, threads: int, kernels: str = "native") -> dict:
    import torch

    from fgresq_sdk.train.ema import WeightEMA

    model, params, opt, gen = _seeded_training(threads, kernels)
    ema = WeightEMA(model, 0.995)
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        loss = _forward_loss(model, gen, batch, size)[3]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(model, step + 1)
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - t0
    h = hashlib.sha256()
    with ema.applied(model):
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().contiguous().numpy().tobytes())
    return {"sha256": h.hexdigest(), "last_loss": losses[-1], **_machine(threads, batch, size), "steps": steps,
            "seconds": round(seconds, 1)}


def _machine(threads: int, batch: int, size: int) -> dict:
    """What a result must carry to be compared with another machine's: the CPU, torch, the run's shape, the pins in
    force and what ATen and oneDNN made of them."""
    import torch

    from fgresq_sdk.cpu import cpu_isa, cpu_model

    return {"cpu": cpu_model(), "isa": cpu_isa(), "torch": torch.__version__, "threads": threads, "batch": batch,
            "size": size, "pins": {k: os.environ[k] for k in PINS if k in os.environ},
            "aten_capability": torch.backends.cpu.get_cpu_capability(), "onednn": torch.backends.mkldnn.enabled,
            "emulated_cpu": os.environ.get(EMULATED_ENV)}


def _digest(t) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def per_module(batch: int, size: int, threads: int, kernels: str = "native") -> dict:
    """One step of fingerprint()'s training (same seeds, init and loss), hashed where it can part between CPUs:
    every leaf module's output in the order the forward pass runs it, the loss, every parameter's gradient, every
    weight after clipping and AdamW. Compared across two machines (--compare), the first differing forward entry
    names the kernel that sums differently (later ones differ because their input did); equal forward passes with
    differing gradients point at a backward kernel, equal gradients with differing weights at the optimiser."""
    import torch

    model, params, opt, gen = _seeded_training(threads, kernels)
    forward: list[list[str]] = []

    def hook(name):
        def record(_module, _inputs, output):
            outs = output if isinstance(output, (tuple, list)) else (output,)
            forward.extend([f"{name}[{k}]", _digest(t)] for k, t in enumerate(outs) if torch.is_tensor(t))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n and not any(m.children())]
    q, score, logits, loss = _forward_loss(model, gen, batch, size)
    for h in handles:
        h.remove()
    forward += [["quality_features", _digest(q)], ["score", _digest(score)], ["compare_logits", _digest(logits)],
                ["loss", _digest(loss)]]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = [[n, _digest(p.grad)] for n, p in named if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return {"forward": forward, "grads": grads, "weights": [[n, _digest(p)] for n, p in named],
            **_machine(threads, batch, size)}


def compare(a: dict, b: dict) -> list[str]:
    """Lines saying, per section of two per_module() results, the first entry whose hash differs and how many do."""
    lines = [f"A: {a.get('cpu')} {a.get('isa')} torch {a.get('torch')} pins {a.get('pins')}",
             f"B: {b.get('cpu')} {b.get('isa')} torch {b.get('torch')} pins {b.get('pins')}"]
    if (a.get("batch"), a.get("size"), a.get("threads")) != (b.get("batch"), b.get("size"), b.get("threads")):
        lines.append("warning: batch, size or threads differ, so every hash may differ for that alone")
    for section in ("forward", "grads", "weights"):
        ea, eb = a.get(section, []), b.get(section, [])
        if [n for n, _ in ea] != [n for n, _ in eb]:
            lines.append(f"{section}: the two runs hold other entries (another model or torch); not comparable")
            continue
        differ = [n for (n, ha), (_, hb) in zip(ea, eb) if ha != hb]
        where = f", the first: {differ[0]}" if differ else ""
        lines.append(f"{section}: {len(differ)} of {len(ea)} differ{where}")
    return lines


def emulate(model: str, argv: list[str], pins: dict[str, str]) -> int:
    """Run this script under qemu-user's CPU `model` with the pins already in the environment (an execve inside
    qemu-user would leave the emulator and run natively). qemu's warnings about CPUID bits its TCG lacks are
    dropped; /proc/cpuinfo still names the host, so the result records the emulated model."""
    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if qemu is None:
        print("isa_repro: --emulate needs qemu-user (apt-get install qemu-user-static)", file=sys.stderr)
        return 2
    env = {**os.environ, **pins, EMULATED_ENV: model}
    res = subprocess.run([qemu, "-cpu", model, sys.executable, os.path.abspath(__file__), *argv], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sys.stderr.write("".join(line for line in res.stderr.splitlines(keepends=True) if "TCG doesn't support" not in line))
    sys.stdout.write(res.stdout)
    return res.returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pins", choices=sorted(PIN_SETS), help="set these three pins (the process re-executes itself)")
    ap.add_argument("--pin-avx2", dest="pins", action="store_const", const="avx2", help="the same as --pins avx2")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2, help="2: the recipe's machine")
    ap.add_argument("--emulate", metavar="QEMU_CPU",
                    help="run under qemu-user as this CPU model, e.g. EPYC-Milan (AMD Zen 3), EPYC-Rome (Zen 2); "
                         "see qemu-x86_64 -cpu help")
    ap.add_argument("--per-module", metavar="OUT_JSON",
                    help="write one step's hashes per module output, gradient and weight (to compare two CPUs)")
    ap.add_argument("--compare", nargs=2, metavar=("A_JSON", "B_JSON"),
                    help="where two --per-module files part: the first differing entry of each section")
    a = ap.parse_args(argv)
    if a.compare:
        try:
            runs = [json.loads(Path(f).read_text(encoding="utf-8")) for f in a.compare]
        except (OSError, ValueError) as exc:
            print(f"isa_repro: --compare: {exc}", file=sys.stderr)
            return 2
        print("\n".join(compare(*runs)))
        return 0
    pins = PIN_SETS.get(a.pins or "", {})
    if a.emulate:
        given, rest = iter(sys.argv[1:] if argv is None else argv), []
        for arg in given:  # everything but --emulate X / --emulate=X goes to the emulated run
            if arg == "--emulate":
                next(given, None)
            elif not arg.startswith("--emulate="):
                rest.append(arg)
        return emulate(a.emulate, rest, pins)
    if any(os.environ.get(k) != v for k, v in pins.items()):
        # the libraries read these when they load: set them before torch is imported, in a fresh process
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **pins})
    kernels = "portable" if a.pins == "cnr" else "native"
    if a.per_module:
        result = per_module(a.batch, a.size, a.threads, kernels)
        try:
            Path(a.per_module).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"isa_repro: --per-module: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {a.per_module}: {len(result['forward'])} module outputs, {len(result['grads'])} gradients, "
              f"{len(result['weights'])} weights")
        return 0
    print(json.dumps(fingerprint(a.steps, a.batch, a.size, a.threads, kernels)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
