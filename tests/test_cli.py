"""The front door: every command's --help, a quiet console, and docs that stay true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run, subprocess_env

COMMANDS = {
    "fmnist-train": {"workdir", "preset", "strategy", "epochs", "validation_size", "export", "logical_cpus"},
    "fmnist-tune": {"workdir", "tuner", "time_budget", "search_space", "validation_size", "retrain_best"},
    "fmnist-export": {"workdir", "export_base", "version", "tflite", "test_time_augmentation", "polarity"},
    "fmnist-predict": {"model", "top_k", "polarity", "invert", "json"},
    "fmnist-launch": {"num_workers", "tuner_workers"},
    "fmnist-report": {"workdir"},
}
# absl's own flags, valid for every command.
ABSL_FLAGS = {"help", "helpfull", "helpshort", "verbosity", "v", "flagfile"}


def _command(name: str) -> str:
    """The installed console script (pip's wrapper), beside the running interpreter."""
    return str(Path(sys.executable).parent / name)


def _help(name: str) -> str:
    # absl's --help exits with status 1 after printing.
    done = subprocess.run([_command(name), "--help"], capture_output=True, text=True, timeout=120)
    assert done.stdout and "Traceback" not in done.stderr, done.stderr[-2000:]
    return done.stdout


def _listed_flags(help_text: str) -> set[str]:
    return set(re.findall(r"^\s+--(?:\[no\])?([a-z_0-9]+)", help_text, re.MULTILINE))


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    return {name: _help(name) for name in COMMANDS}


def test_help_shows_each_commands_purpose_and_own_flags(helps):
    for name, expected in COMMANDS.items():
        text = helps[name]
        assert text.startswith(f"{name}: "), text[:200]
        listed = _listed_flags(text)
        assert expected <= listed, (name, expected - listed)
        # Only the command's own flags: none of TensorFlow's or absl's hundreds.
        assert len(listed) < 45 and "tt_check_filter" not in text and "xla" not in text, name
    assert "(default: 'auto')" in helps["fmnist-train"]  # --strategy
    assert "Peak learning rate" in helps["fmnist-train"]
    from tuning.search_space import GROUPS

    unwrapped = re.sub(r"\n\s+", "", helps["fmnist-tune"])  # absl wraps the help inside words too.
    named = re.search(r"--search_space: .*?\(default: all of ([a-z_,]+)\)", unwrapped)
    assert named and named[1].split(",") == list(GROUPS), named


def _readme_flags() -> dict[str, set[str]]:
    """Flags the README gives each command.

    A flag belongs to the command named last before it in the same paragraph
    (each line of a code block is its own paragraph), else to the command in
    the section's heading; `fmnist-launch ... -- fmnist-train` hands the flags
    after `--` to the next command.
    """
    found: dict[str, set[str]] = {name: set() for name in COMMANDS}
    tokens = re.compile(r"fmnist-[a-z]+|\s--\s|--[a-z_0-9]+")
    heading_owner, in_code, paragraphs = None, False, [[None, ""]]
    for line in (REPO / "README.md").read_text().replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif line.startswith("#"):
            named = re.search(r"fmnist-[a-z]+", line)
            heading_owner = named[0] if named else None
        elif in_code or not line.strip():
            paragraphs += [[None, line], [heading_owner, ""]]
        else:
            paragraphs[-1][1] += " " + line
            paragraphs[-1][0] = paragraphs[-1][0] or heading_owner
    for owner, text in paragraphs:
        for token in tokens.findall(text):
            if token.startswith("fmnist-"):
                owner = token if token in COMMANDS else None
            elif token.strip() == "--":
                owner = None
            elif owner:
                found[owner].add(token[2:])
    return found


def test_every_flag_the_readme_gives_a_command_is_defined_by_it(helps):
    for name, flags in _readme_flags().items():
        listed = _listed_flags(helps[name]) | ABSL_FLAGS
        assert flags <= listed | {f"no{f}" for f in listed}, (name, flags - listed)
    readme = _readme_flags()
    assert {"validation_size", "noexport", "logical_cpus"} <= readme["fmnist-train"]
    assert {"polarity", "invert", "top_k"} <= readme["fmnist-predict"] and "time_budget" in readme["fmnist-tune"]


def test_readme_test_command_is_the_one_ci_runs():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme.split("## Two commands", 1)[1], re.DOTALL)
    test_command = commands[1].strip()
    assert "pytest" in test_command and "constraints.txt" in test_command
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


def test_no_development_history_in_docs_or_code():
    # The generated benchmark record is dated by design and exempt.
    pattern = "|".join(
        [
            r"\bsession [0-9]",
            r"\bsessions [0-9]+-[0-9]+",
            r"before the (fix|change)",
            r"the issue'?s goal",
            r"earlier session[s]",
            r"\bissue #?[0-9]+",
        ]
    )
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    checked = [
        f for f in files if f.endswith((".py", ".md", ".sbatch", ".yaml", ".toml", "run")) and f != "BENCHMARKS.md"
    ]
    hits = []
    for name in checked:
        if name == "tests/test_cli.py":
            continue
        for number, line in enumerate((REPO / name).read_text().splitlines(), 1):
            if re.search(pattern, line, re.IGNORECASE):
                hits.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize(
    "strategy",
    # float16 on a CPU without float16 kernels: oneDNN's note that it falls back to Eigen stays off the console.
    [[], ["--strategy=mirrored", "--logical_cpus=2"], ["--precision=mixed_float16"]],
    ids=["default", "mirrored", "float16_on_cpu"],
)
def test_smoke_run_shows_our_progress_and_not_tensorflows_logs(tiny_data_dir, tmp_path, strategy):
    env = subprocess_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")  # The command's own default, as a user gets it.
    command = [_command("fmnist-train"), "--preset=smoke", f"--data_dir={tiny_data_dir}", f"--workdir={tmp_path}"]
    command += strategy
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, timeout=300)
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output[-3000:]
    # Standard output is a pipe here, as in a Slurm job's log: plain lines, no bar redrawn in place.
    assert not re.search("[\x1b\r\b]", output), repr(output[:500])
    lines = output.rstrip("\n").split("\n")
    # float16 may add one line of ours: its measured speed, where it is the slower on this CPU.
    warnings = [line for line in lines if line.startswith("warning: mixed_float16 on this CPU: a float16 step ran")]
    assert len(warnings) <= 1 and len(lines) - len(warnings) <= 20, "\n".join(lines)
    chatter = [line for line in lines if re.match(r"^[IW]\d{4} |.*(oneDNN|cuda|Sharding callback|absl::)", line)]
    assert not chatter, chatter
    for expected in (
        "Fashion-MNIST from",
        "precision",
        "epoch 1:",
        "Final evaluation",
        "exported",
        f"results in {tmp_path}",
    ):
        assert expected in output, expected
    assert f"results in {tmp_path}: metrics.json, report/, export/" in output


def test_the_closing_line_names_only_what_the_run_wrote(tiny_data_dir, tmp_path):
    command = [_command("fmnist-train"), "--preset=smoke", f"--data_dir={tiny_data_dir}", f"--workdir={tmp_path}"]
    done = run([*command, "--noexport", "--noreport"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"results in {tmp_path}: metrics.json"
    assert not (tmp_path / "export").exists() and not (tmp_path / "report").exists()


def test_impossible_validation_size_names_the_flag_and_the_largest_size(tiny_data_dir, tmp_path):
    command = [
        _command("fmnist-train"),
        "--preset=smoke",
        f"--data_dir={tiny_data_dir}",
        f"--workdir={tmp_path}",
        "--validation_size=5000",
    ]
    done = run(command, timeout=300)
    assert done.returncode != 0
    error = done.stderr.strip().splitlines()[-1]
    assert "--validation_size" in error and "from 0 to 639" in error, error
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command, message",
    [
        (["fmnist-train", "--workdir=W", "--noexport", "--export_base=E"], "--export_base says where to export"),
        (["fmnist-predict", "--model=M", "--invert", "--polarity=auto", "x.png"], "give --polarity or --invert"),
    ],
)
def test_flags_that_contradict_each_other_are_refused_in_one_line(tmp_path, command, message):
    command = [_command(command[0]), *(arg.replace("=W", f"={tmp_path / 'w'}") for arg in command[1:])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and message in done.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["fmnist-train", "fmnist-tune"])
def test_gpus_given_that_tensorflow_cannot_see_are_refused_not_trained_on_the_cpu(tiny_data_dir, tmp_path, command):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has GPUs: CUDA_VISIBLE_DEVICES=0 names a real one")
    workdir = tmp_path / "w"
    args = [_command(command), f"--workdir={workdir}", "--preset=smoke", f"--data_dir={tiny_data_dir}"]
    done = run(args, timeout=300, env=dict(subprocess_env(), CUDA_VISIBLE_DEVICES="0"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: CUDA_VISIBLE_DEVICES=0 gives this process GPUs, but TensorFlow sees none; ")
    ), done.stderr[-1000:]
    assert "or set CUDA_VISIBLE_DEVICES= (empty) to train on CPUs" in done.stderr
    assert not workdir.exists()
    if command == "fmnist-train":
        # Hidden GPUs ("-1": CUDA takes none from the first invalid id) train on the CPU as asked.
        hidden = run([*args, "--noexport", "--noreport"], 300, dict(subprocess_env(), CUDA_VISIBLE_DEVICES="-1"))
        assert hidden.returncode == 0, hidden.stderr[-2000:]
