"""How to read each section of the benchmark record (BENCHMARKS.md); the numbers come from results.json."""

_EACH_RUN = "Every run behind the medians of the section before, in the order they were trained."

NOTES = {
    "training_throughput": (
        "The seed (tutorial) model, trained three ways. Each turn is one whole epoch over the training images, the "
        "way the tutorial's user runs it (`model.fit` with its per-epoch set-up). The recommended setting is batch "
        "256 at the tutorial's learning rate (1e-3, Adam) and `--precision=auto`, which on processors with bf16 "
        "instructions measures a convolution step and keeps `mixed_bfloat16` only when it is clearly faster, and "
        "picks float32 elsewhere. It holds the tutorial's accuracy: trained to the end, it scores higher than the "
        "tutorial's own recipe (`seed_b256_same_rate` in the finished runs over seeds, against the `seed` section), "
        "because eight times fewer steps of the same size memorise the training set more slowly. Scaling the rate "
        "with the batch scored lower: by its square root, the usual rule for Adam (`seed_b256_sqrt_rate`, and "
        "`seed_b256` and `seed_b128`, batch 128, where the record measured them), or linearly with two epochs of "
        "warm-up (candidate recipes). A section measured while the recommendation scaled the rate names it in its "
        "row; the rate does not change a step's speed."
    ),
    "input_headroom": (
        "The input pipeline alone, against the fastest model's consumption in the seed-model throughput "
        "section: headroom above 1 means "
        "the model, not the input, sets the pace. Ours shuffles indices and gathers whole batches, then augments "
        "each batch with two small matmuls (`augment._flip_and_shift`). The other rows take one step away "
        "at a time. Batches of 128 with the `default` preset's augmentation (the seed model trains on batches of "
        "256 without any). Each turn builds one pipeline, lets it yield a few batches, times it alone and "
        "drops it, in rotating turns; medians of three turns."
    ),
    "utilisation": (
        "Analytic model FLOPs (forward multiply-adds x 2, x 3 for training) times examples per second, as a "
        "fraction of the matrix-multiply rate measured in the same run in the precision the row trains in "
        "(bfloat16 for `mixed_bfloat16` rows, float32 otherwise). The row '3x the tutorial' shows what that rate "
        "would demand of this machine."
    ),
    "execution_settings": (
        "The default model's training step under each setting, each in its own process (thread pools are fixed "
        "once TensorFlow starts). The defaults: steps per execution 16, TensorFlow's own thread pools, the fused "
        "batch-norm kernel, ReLU after pooling (exactly the same numbers as the textbook order) and each block's "
        "last batch norm after pooling (other statistics in training; the batch-norm placement section compares "
        "accuracy). XLA stays an option for GPUs. Rows a few percent apart are within this host's noise."
    ),
    "step_profile": (
        "The default model's training step at its batch of 512 in each precision, each in its own process: "
        "examples per second timed without the profiler, then one more compiled call traced with TensorFlow's "
        "profiler and each op's own time (nested ops subtracted) added up by category: convolution and matmul "
        "kernels, batch norm (the fused kernels and everything in the batch-norm layers), casts, the optimiser's "
        "update, and all other ops (pooling, ReLU, dropout, loss). Ops run on several threads at once, so the "
        "categories are thread time per step and shares of it; the input pipeline runs ahead on its own threads "
        "and is left out. The processor also stands in for older kinds of CPU: oneDNN held to "
        "`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16` runs as on a CPU with AVX512_BF16 and no AMX, and held to "
        "`AVX512_CORE` as on one without bf16 instructions (bf16 emulated). A processor that really lacks bf16 "
        "instructions profiles float32 alone (auto never picks mixed_bfloat16 there)."
    ),
    "auto_precision": (
        "The same processes as the section before, per kind of CPU: the default model's training step in each "
        "precision (medians of the rounds), and what `--precision=auto` chose in each of those processes, as a "
        "run would, from its own short measurement (a bf16 training step of a miniature of the model's blocks "
        "against float32; it keeps mixed_bfloat16 at 1.1x or more). On a kind held with `ONEDNN_MAX_CPU_ISA`, "
        "/proc/cpuinfo still lists bf16 instructions, so `auto` measures there; a processor that really lacks "
        "them gets float32 without a measurement."
    ),
    "time_to_accuracy": (
        "Training seconds (`elapsed_seconds` in each run's history.json, validation included) until validation "
        "accuracy first reaches each level; one run of each recipe, not the best of several."
    ),
    "serving": (
        "The exported `serving_default` signature with and without the test-time views, and Keras "
        "`model.predict` on the same weights: batch-1 latency and batch-256 throughput."
    ),
    "two_workers_vs_one": (
        "The reference recipe (benchmarks/reference_default.json) at the same global batch of 128 on one process, "
        "and on two MultiWorkerMirroredStrategy workers sharing this machine's cores over 127.0.0.1 (each with its "
        "share of the threads): as `fmnist-launch` starts them by default (each worker pinned to its own cores, "
        "feeding its one replica from its own tf.data iterator, per-replica batch-norm statistics, gradients summed "
        "in the recipe's `all_reduce_dtype`, bfloat16 under mixed_bfloat16), then with one of those changed per "
        "row. Each run's value is its fastest steady-state "
        "epoch (validation included); each row is the median of alternating rounds."
    ),
    "step_breakdown": (
        "Where a two-worker step's time goes. The compute is one worker's train step alone, at its batch of 64 with "
        "its share of the threads; the gradient all-reduce is timed alone in a two-worker cluster on tensors "
        "shaped like the gradients: packed in the dtype training uses, packed in float32, and one float32 "
        "collective per variable; the batch-norm "
        "synchronisation is the step with global statistics minus the default step. The rest (input pipeline, "
        "dispatch, the once-per-call reduces, waiting for the slower worker) is what remains of the measured step."
    ),
    "recipes": (
        "Each recipe trained on the full training split, back to back on this machine with nothing else running. "
        "Where the title names several seeds, each recipe trained once per seed, the recipes taking turns (all "
        "with seed 0, then all with seed 1, ...): accuracies are the median with the lowest and highest seed in "
        "brackets, ratios to the reference are each seed's run against the reference run of the same turn, then "
        "the median, and each seed's run is in the next section. The reference is "
        "benchmarks/reference_default.json, the fixed recipe the comparisons measure against. Seconds to 93% are "
        "`elapsed_seconds` in history.json (training plus per-epoch validation, single view) at the first epoch "
        "reaching 93.0% validation accuracy. Test accuracy is evaluated once, at the end of each run: as served "
        "(with the preset's test-time views) and by the network alone."
    ),
    "recipe_seeds": _EACH_RUN,
    "recipes_fast": "`fast` and the reference recipe, trained as in the recipes section.",
    "recipe_seeds_fast": _EACH_RUN,
    "recipes_default": "`default` and the reference recipe, trained as in the recipes section.",
    "recipe_seeds_default": _EACH_RUN,
    "recipes_best": (
        "`best` and the reference recipe, trained as in the recipes section. `best` is a final fit on all 60,000 "
        "training images, with no validation split, so its validation columns read n/a; a section kept from "
        "another machine may come from a commit whose `best` still held out 5,000 (its commit says which)."
    ),
    "recipe_seeds_best": _EACH_RUN,
    "recipes_seed": (
        "`seed`, the tutorial's recipe the project started from (float32, Adam at 1e-3, batches of 32, 50 "
        "epochs, no augmentation, batch norm or test-time views), trained as in the recipes section: the baseline "
        "every other preset is measured against. The gap column is training minus test accuracy, in points."
    ),
    "recipe_seeds_seed": _EACH_RUN,
    "seed_runs": (
        "Finished `fmnist-train` runs of one recipe that differ only in `--seed` (checked from their "
        "config.json), named with `python -m benchmarks.run --seed_runs=NAME=WORKDIR,...`: the median over seeds "
        "with the lowest and highest in brackets. Their training seconds are as each run recorded them, so they "
        "compare only with runs made in the same conditions."
    ),
    "seed_runs_each": "Each run behind the medians over seeds of the same runs (same title above), with its workdir.",
    "candidates": (
        "Finished `fmnist-train` runs of candidate recipes, named with `python -m benchmarks.run "
        "--candidate_runs=WORKDIR,...`, each beside what its config.json changes from the preset of its name as "
        "the code of the commit in its row defines it (seed and data path aside). Each command adds its runs to "
        "the rows recorded before and replaces the row of a run named again; the section's date, machine, commit "
        "and command are those of the latest. Validation is what a preset is chosen on: the final "
        "weights as served (the preset's test-time views) and single-view accuracy at the last and the best "
        "epoch. A run that held out other validation images than its preset (another `data.validation_size` "
        "or `data.split_seed`) is also scored as served on the preset's validation images, when it never trained "
        "on any of them (blank when it did), so every row compares on the same images. "
        "Test accuracy is left out; the recipes sections measure it once per finished recipe. Training "
        "seconds are as each run recorded them: runs trained two at a time on two cores took about twice as long."
    ),
    "views": (
        "Finished runs named with `python -m benchmarks.run --view_runs=WORKDIR,...`: the validation accuracy of "
        "their final weights when the probabilities of several views of each image are averaged (the float32 "
        "network alone scores each view; `benchmarks/views.py` defines the sets: mirrored or not, shifted with "
        "zero fill). `flip_and_shift (10)` is what the presets serve. The views are chosen on validation like the "
        "rest of a recipe. Each command adds its runs to the rows recorded before and replaces the row of a run "
        "named again; the section's date, machine, commit and command are those of the latest."
    ),
    "ensembles": (
        "Groups of finished runs named with `python -m benchmarks.run --ensemble_runs=NAME=WORKDIR,...`, each run "
        "scored as served (float32, its test-time views) on the same validation images, and the group scored with "
        "the runs' probabilities averaged. Averaging can only fix images the runs disagree on: an error every run "
        "makes stays, and an error only some make is fixed when the others outvote it. The gain of averaging is "
        "what the recipe would buy with that many times its training compute spent on independent runs. Each "
        "command adds its groups to the rows recorded before and replaces the row of a group named again; the "
        "section's date, machine, commit and command are those of the latest."
    ),
    "ablation": (
        "`fast` without one technique at a time, replaced by what the row names; each value is the median of "
        "two seeds. A technique helps when removing it costs epochs or seconds to 93% or final validation "
        "accuracy."
    ),
    "precision": (
        "Each recipe trained in `mixed_bfloat16` and in float32, on the same machine in the same run, with the "
        "seeds of the recipes section (where the table shows medians, the other precision trained with each of "
        "those seeds and `--precision=auto`'s own runs are reused): accuracy and training seconds, and which "
        "precision auto picked."
    ),
    "placement": (
        "Each recipe trained with its blocks' last batch norm before max-pooling (the textbook order) and after "
        "it (`ModelConfig.batch_norm_after_pooling`: batch norm and ReLU on a quarter of the values, with the "
        "pooled map's statistics), once per seed, the two taking turns with the same seed. Training examples per "
        "second are whole runs' (epochs x training images / training seconds); accuracies are medians with the "
        "lowest and highest seed in brackets. The placement is chosen on validation accuracy; the test columns "
        "show what it cost or gained there."
    ),
    "placement_seeds": _EACH_RUN,
    "tuning_rate": (
        "A random search of one-epoch trials of the reference recipe on 16,384 training images, first by one tuner "
        "with the whole machine, then by a chief and two tuner workers under `fmnist-launch --tuner_workers=2` "
        "(each worker pinned to its share of the cores), each for the same wall-clock budget (`--time_budget`)."
    ),
    "scaling_model": (
        "Predicted efficiency (compute time over compute plus communication) for N workers, each keeping a batch "
        "of 64, from this machine's measured compute per step and the gradient bytes in the dtype training "
        "all-reduces them in: a ring all-reduce over N "
        "workers takes T = 2(N-1)/N x bytes / bandwidth + k x 2(N-1) x alpha, with k collectives per step (1 for "
        "the packed gradients, plus 2 once-per-call reduces spread over the call's steps) and alpha the stated "
        "per-message latency of each network. No overlap of communication with compute is assumed."
    ),
}
