"""Where a training step of the default model spends its time, and what `--precision=auto` picks, per kind of CPU.

Each precision is profiled in its own child process: oneDNN reads
`ONEDNN_MAX_CPU_ISA` once, at start-up, so a processor with newer
instructions also stands in for the older kinds of CPU: an AMX processor held
to AVX512_CORE_BF16 behaves as an AVX512_BF16 processor without AMX, and one
held to AVX512_CORE as a processor without bf16 instructions (there bf16 is
emulated). Each kind trains float32 and mixed_bfloat16 side by side, and each
child also runs `auto`'s own measurement (`precision.measured_bf16_speedup`),
so one run shows whether `auto` picks the faster precision on every kind of
CPU this processor can stand in for. A child times whole compiled calls
without the profiler (examples per second), then traces one more call and
adds up each op's own time (time inside it minus the ops nested in it) by
category. Ops run on several threads at once, so the categories add up to
thread time, shown per step and as shares of all op time; the input
pipeline's threads run ahead of the step and are left out.

  python -m benchmarks.step_profile --data_dir=../shared/data/fashion-mnist   # this comparison alone
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CATEGORIES = ("convolution and matmul kernels", "batch norm", "casts", "optimiser", "other ops")
# A TensorFlow op's trace event is named "scope/op_name:OpType".
_OP_EVENT = re.compile(r"^([^\s:]+):([A-Z_][A-Za-z0-9_]*)$")
_KERNEL_TYPES = re.compile(r"Conv|MatMul|Einsum")
# Layer and optimiser scopes: our batch-norm layers end in "_bn"; Keras
# optimisers run their updates under their own lower-case name.
_BATCH_NORM_SCOPE = re.compile(r"_bn(_\d+)?/")
_OPTIMISER_SCOPE = re.compile(r"(^|/)(sgd|adam|adamw|loss_scale_optimizer|optimizer)(_\d+)?/", re.IGNORECASE)
ISA_WITHOUT_AMX = "AVX512_CORE_BF16"
ISA_WITHOUT_BF16 = "AVX512_CORE"


def category(name: str, op_type: str) -> str:
    """The category of one op, from its type and the scope in its name."""
    if op_type == "Cast":
        return "casts"
    if op_type.startswith("FusedBatchNorm") or _BATCH_NORM_SCOPE.search(name):
        return "batch norm"
    if _OPTIMISER_SCOPE.search(name) or op_type.startswith("ResourceApply"):
        return "optimiser"
    if _KERNEL_TYPES.search(op_type):
        return "convolution and matmul kernels"
    return "other ops"


def op_self_times(space) -> dict[str, float]:
    """Seconds of each category's ops in an XSpace, each op's own time (nested ops subtracted)."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for plane in space.planes:
        metadata = plane.event_metadata
        for line in plane.lines:
            if line.name.startswith("tf_data"):
                continue  # The input pipeline runs ahead on its own threads.
            ops = []
            for event in line.events:
                match = _OP_EVENT.match(metadata[event.metadata_id].name)
                if match:
                    ops.append((event.offset_ps, event.offset_ps + event.duration_ps, category(*match.groups())))
            ops.sort(key=lambda op: (op[0], -op[1]))
            stack: list[list] = []  # [end, category, own picoseconds]
            for start, end, kind in ops:
                while stack and stack[-1][0] <= start:
                    done = stack.pop()
                    totals[done[1]] += done[2] / 1e12
                if stack:
                    stack[-1][2] -= end - start
                stack.append([end, kind, end - start])
            for done in stack:
                totals[done[1]] += done[2] / 1e12
    return totals


def _child(precision: str, data_dir: str | None, num_steps: int, batch: int | None) -> None:
    import dataclasses
    import time

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from benchmarks.throughput import our_trainer
    from pipeline import presets
    from pipeline.data import sources as data_lib
    from pipeline.training import precision as precision_lib

    speedup = precision_lib.measured_bf16_speedup()  # What `auto` measures, in this process as a run would.
    train, _, _ = data_lib.load_train_test(data_dir)
    config = presets.preset("default")
    changes = {"precision": precision, **({"global_batch_size": batch} if batch else {})}
    config = config.replace(train=dataclasses.replace(config.train, **changes))
    run = our_trainer(config, train.images, train.labels, num_steps)
    start = time.perf_counter()
    examples = run()
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        run()
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(logdir).rglob("*.xplane.pb")).read_bytes())
    per_step = {kind: value / num_steps for kind, value in op_self_times(space).items()}
    auto = {"auto bf16 speedup": speedup, "auto picks": precision_lib.resolve_precision("auto")}
    print(json.dumps({"examples/s": examples / seconds, "step seconds": seconds / num_steps, "ops": per_step, **auto}))


def _measure(precision: str, isa: str | None, data_dir, num_steps: int, batch: int | None) -> dict:
    command = [sys.executable, "-m", "benchmarks.step_profile", f"--precision={precision}", f"--steps={num_steps}"]
    command += [f"--batch={batch}"] if batch else []
    command += [f"--data_dir={data_dir}"] if data_dir else []
    env = dict(os.environ, **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {}))
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"profiling {precision} failed:\n{done.stderr[-2000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))


def kinds(cpu: dict) -> dict[str, str | None]:
    """Kind of CPU -> the `ONEDNN_MAX_CPU_ISA` that makes this processor behave as one (None: as it is)."""
    if cpu.get("onednn_max_cpu_isa"):
        # Held already: every child inherits the hold, so the processor stands in for that one kind.
        return {f"held to {cpu['onednn_max_cpu_isa']}": None}
    if cpu["amx_bf16"]:
        return {"AMX": None, "AVX512_BF16 without AMX": ISA_WITHOUT_AMX, "no bf16 instructions": ISA_WITHOUT_BF16}
    if cpu["avx512_bf16"]:
        return {"AVX512_BF16": None, "no bf16 instructions": ISA_WITHOUT_BF16}
    return {"no bf16 instructions": None}


def variants(cpu: dict) -> dict[str, tuple[str, str | None, str]]:
    """Row name -> (precision, ONEDNN_MAX_CPU_ISA, kind of CPU) for this processor.

    Each kind trains both precisions, except a processor that really lacks
    bf16 instructions: there `--precision=auto` picks float32 without
    measuring, and mixed_bfloat16 is not profiled.
    """
    rows = {}
    for kind, isa in kinds(cpu).items():
        held = f", ONEDNN_MAX_CPU_ISA={isa}" if isa else ""
        really_without_bf16 = kind == "no bf16 instructions" and isa is None
        for precision in ("float32",) if really_without_bf16 else ("float32", "mixed_bfloat16"):
            rows[f"{precision} ({kind}{held})"] = (precision, isa, kind)
    return rows


def measure(data_dir: str | None, quick: bool, cpu: dict) -> dict[str, list[dict]]:
    """Row name (`variants`) -> each round's child measurement, the rows taking turns."""
    from benchmarks.common import rounds

    # --quick: a smoke test at a small batch, not a measurement.
    num_steps, repeats, batch = (2, 1, 64) if quick else (16, 3, None)
    chosen = variants(cpu)
    results: dict[str, list[dict]] = {name: [] for name in chosen}
    for order in rounds(list(chosen), repeats):
        for name in order:
            precision, isa, _ = chosen[name]
            results[name].append(_measure(precision, isa, data_dir, num_steps, batch))
    return results


def profile_rows(results: dict[str, list[dict]]) -> list[dict]:
    """Per row: examples/s and each category's thread time per step, medians of the rounds."""
    rows = []
    for name, runs in results.items():
        ops = {kind: statistics.median(run["ops"][kind] for run in runs) for kind in CATEGORIES}
        total = sum(ops.values()) or 1.0
        row = {
            "precision (kind of CPU)": name,
            "examples/s": statistics.median(run["examples/s"] for run in runs),
            "step (ms)": 1000 * statistics.median(run["step seconds"] for run in runs),
            "op thread time per step (ms)": 1000 * total,
        }
        row.update({f"{kind} (%)": 100 * ops[kind] / total for kind in CATEGORIES})
        rows.append(row)
    return rows


def auto_rows(results: dict[str, list[dict]], cpu: dict) -> list[dict]:
    """Per kind of CPU: the default model's step in each precision, and what `auto` picked in every child."""
    chosen = variants(cpu)
    rows = []
    for kind, isa in kinds(cpu).items():
        names = {chosen[name][0]: name for name in chosen if chosen[name][2] == kind}
        rates = {p: statistics.median(run["examples/s"] for run in results[name]) for p, name in names.items()}
        runs = [run for name in names.values() for run in results[name]]
        picks = [run["auto picks"] for run in runs]
        speedups = [run["auto bf16 speedup"] for run in runs if run["auto bf16 speedup"] is not None]
        faster = max(rates, key=rates.get)
        ratio = rates["mixed_bfloat16"] / rates["float32"] if "mixed_bfloat16" in rates else None
        picked = ", ".join(f"{p} {picks.count(p)}/{len(picks)}" for p in sorted(set(picks)))
        rows.append(
            {
                "kind of CPU": kind + (f" (ONEDNN_MAX_CPU_ISA={isa})" if isa else " (this processor)"),
                "float32 examples/s": rates["float32"],
                "mixed_bfloat16 examples/s": rates.get("mixed_bfloat16"),
                "step, bf16 / float32": ratio,
                "auto's probe, bf16 / float32": statistics.median(speedups) if speedups else "not measured",
                "auto picks (of its processes)": picked,
                "auto picks the faster": _verdict(set(picks), faster, ratio),
            }
        )
    return rows


def _verdict(picks: set[str], faster: str, ratio: float | None) -> str:
    from pipeline.training.precision import BF16_MIN_SPEEDUP

    if picks == {faster}:
        return "yes"
    if picks == {"float32"} and ratio is not None and ratio < BF16_MIN_SPEEDUP:
        return f"within auto's margin (bf16 must be {BF16_MIN_SPEEDUP}x as fast)"
    return "no"


def step_profile(data_dir: str | None, quick: bool) -> tuple[list[dict], list[dict]]:
    """The profile rows and the `auto` rows (`profile_rows`, `auto_rows`) of one measurement."""
    from benchmarks.record import machine

    cpu = machine()
    results = measure(data_dir, quick, cpu)
    return profile_rows(results), auto_rows(results, cpu)


if __name__ == "__main__":
    from absl import app, flags

    from benchmarks.common import define_child_flags

    flags.DEFINE_string("precision", None, "Profile this precision only (a child process).")
    define_child_flags(steps=16)

    def _main(argv) -> None:
        del argv
        f = flags.FLAGS
        if f.precision:
            _child(f.precision, f.data_dir, f.steps, f.batch)
            return
        from benchmarks.common import print_table

        profile, auto = step_profile(f.data_dir, f.quick)
        print_table(profile)
        print_table(auto)

    app.run(_main)
