"""fmnist-tune: KerasTuner search; the result is DIR/best_config.json for fmnist-train.

  fmnist-tune --workdir=runs/tune --tuner=hyperband --time_budget=3600 --retrain_best
  fmnist-tune --workdir=runs/tune --search_space=filters,dropout --tuner=random --max_trials=10
  fmnist-launch --tuner_workers=2 -- fmnist-tune --workdir=runs/tune

Rerun the same command to resume an interrupted search.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys

from absl import flags

from launch import common

flags.DEFINE_string("workdir", None, "Search directory (created; reused to resume).", required=True)
flags.DEFINE_enum("tuner", "hyperband", ["hyperband", "bayesian", "random"], "Search algorithm.")
flags.DEFINE_integer(
    "max_trials", 30, "Trials for bayesian and random search (Hyperband's follow from the next two).", lower_bound=1
)
flags.DEFINE_integer("max_epochs", 12, "Epochs of a full trial (Hyperband's largest bracket).", lower_bound=1)
flags.DEFINE_integer("hyperband_factor", 3, "Hyperband reduction factor.", lower_bound=2)
flags.DEFINE_float("time_budget", None, "Wall-clock seconds after which no trial or epoch starts.", lower_bound=1)
flags.DEFINE_list(
    "search_space",
    None,
    "Groups to search, the others fixed at the base config (default: all of "
    "filters,kernel_size,dense_units,dropout,batch_norm,learning_rate,weight_decay,augment).",
)
flags.DEFINE_boolean("retrain_best", False, "Retrain the best config through fmnist-train's path and export it.")
flags.DEFINE_enum("strategy", "auto", ["auto", "default", "mirrored"], "Strategy inside each trial.")
common.define_config_flags()
common.define_thread_flags()
flags.adopt_module_key_flags(common)
FLAGS = flags.FLAGS


# Flags that only some search algorithms read: given to another, they would be ignored.
TUNER_FLAGS = {"max_trials": ("bayesian", "random"), "hyperband_factor": ("hyperband",)}


def _join_a_slurm_search() -> None:
    """Makes the tasks of a Slurm step one KerasTuner search; refuses a TF_CONFIG cluster, which trials cannot use.

    Each trial trains in one process, so the tasks of a step are the
    search's oracle chief and its tuner workers, not one training cluster.
    """
    from pipeline.cluster import environment

    try:
        if environment.tf_config_tasks() > 1:
            common.fail(
                "TF_CONFIG names several tasks, but fmnist-tune trains each trial in one process: start a "
                "distributed search with fmnist-launch --tuner_workers=N, srun (Slurm) or the KERASTUNER_* "
                "variables (README, Tune), and unset TF_CONFIG"
            )
        roles = environment.slurm_search_roles()
    except environment.ClusterError as e:
        common.fail(str(e))
    if roles:
        os.environ.update(roles)
        oracle = f"{roles['KERASTUNER_ORACLE_IP']}:{roles['KERASTUNER_ORACLE_PORT']}"
        role = (
            "the oracle chief, listening on" if roles["KERASTUNER_TUNER_ID"] == "chief" else "a tuner of the oracle on"
        )
        std_logging.getLogger("launch").info(
            "search from Slurm: task %s of %s is %s %s",
            os.environ["SLURM_PROCID"],
            os.environ["SLURM_STEP_NUM_TASKS"],
            role,
            oracle,
        )


def main(argv: list[str]) -> None:
    common.reject_arguments(argv)
    for name, tuners in TUNER_FLAGS.items():
        if FLAGS[name].present and FLAGS.tuner not in tuners:
            common.fail(f"--{name} is read by --tuner={' or '.join(tuners)}, not {FLAGS.tuner}; drop it", 2)
    _join_a_slurm_search()
    common.start_tensorflow(training=True)
    from pipeline import config as config_lib
    from pipeline.cluster import strategies
    from tuning import chief, search_space
    from tuning.oracle import TuneConfig
    from tuning.search import check_base, run_search

    try:
        base = common.config_from_flags()
        search = tuple(FLAGS.search_space) if FLAGS.search_space else search_space.GROUPS
        search_space.config_from_hp(search_space.kt.HyperParameters(), base, search)  # Validates the groups.
        check_base(base)
    except config_lib.ConfigError as e:
        common.fail(str(e), 2)
    tune = TuneConfig(
        tuner=FLAGS.tuner,
        max_trials=FLAGS.max_trials,
        max_epochs=FLAGS.max_epochs,
        hyperband_factor=FLAGS.hyperband_factor,
        time_budget_seconds=FLAGS.time_budget,
        search=search,
        seed=base.train.seed,
    )
    from pipeline.training.preemption import StopSignal, TrainingStopped

    # Every trial builds its own model and compiled steps; TensorFlow counts
    # their tracing against the one function that makes them and warns of
    # "retracing", which here is expected and costs nothing extra.
    std_logging.getLogger("tensorflow").addFilter(
        lambda record: "triggered tf.function retracing" not in record.getMessage()
    )
    # KerasTuner 1.4's `Parent.to_proto` prints a conditional hyperparameter's
    # value each time a trial crosses the wire of a distributed search: the
    # chief and every tuner would print a line "True" (`dropout_rate`'s condition) per trial.
    sys.stdout = common.WithoutLines(sys.stdout, ("True",))
    try:
        if chief.is_distributed_chief():
            chief.leave_gpus_to_tuners(retrains=FLAGS.retrain_best)

        def make_strategy():
            strategy = strategies.make_strategy(FLAGS.strategy)
            common.measure_precision_quietly(base.train.precision)
            return strategy

        with StopSignal() as stop:
            summary = run_search(FLAGS.workdir, base, tune, make_strategy, FLAGS.retrain_best, stop)
    except TrainingStopped as e:
        common.fail(f"search {e}", e.exit_code)
    except (ValueError, *common.input_errors()) as e:
        common.fail(str(e))
    if summary:
        print(json.dumps(summary, indent=2, default=str))


def run() -> None:
    """Console-script entry point."""
    common.run_app(main, __name__)


if __name__ == "__main__":
    run()
