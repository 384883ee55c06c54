"""What a run will cost, said before step 1, and how long it will take, measured from its first steps.

    peft-gpt2 train recipes/alpaca_lora.yaml --set model.name=smollm2-135m
    plan: 6,160 optimizer steps of 16 examples (16 per device x 1 accumulation x 1 process); ...
    time: 58.1 s/step over steps 2-4: 6,160 steps take about 99 h (ends ~...)

``run_plan`` gives the lines before step 1 (steps, examples and tokens per step from the tokenized rows, the
memory estimate of ``memory_estimate``); ``TimeEstimate`` is the Trainer callback that times the steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from transformers import TrainerCallback

from peft_gpt2.training.memory_estimate import available_memory, estimate_peak, peak_memory_mb

HOUR = 3600.0
REPORT_AT = (0.1, 0.5)  # fractions of the run at which the estimate is said again, refined
FIRST_REPORT_STEPS = 3  # timed steps (after step 1) before the first estimate...
FIRST_REPORT_S = 30.0  # ...or fewer, once they took this long: a 1-minute step is reported after step 2


def expected_longest(lengths: list[int], batch: int) -> float:
    """Expected length of the longest of ``batch`` rows drawn at random without replacement: what the collator
    pads a random batch to. P(longest <= k-th shortest) = C(k, batch) / C(n, batch)."""
    ordered, n = sorted(lengths), len(lengths)
    if batch >= n:
        return float(ordered[-1])
    log_total = math.lgamma(n + 1) - math.lgamma(n - batch + 1)
    expected, below = 0.0, 0.0
    for k in range(batch, n + 1):
        at_most = math.exp(math.lgamma(k + 1) - math.lgamma(k - batch + 1) - log_total)
        expected += ordered[k - 1] * (at_most - below)
        below = at_most
    return expected


def planned_steps(args, rows: int) -> int:
    """Optimizer steps the Trainer will take: ``max_steps``, else epochs x steps per epoch (its own arithmetic)."""
    if args.max_steps > 0:
        return args.max_steps
    per_batch = args.per_device_train_batch_size * args.world_size
    batches = rows // per_batch if args.dataloader_drop_last else -(-rows // per_batch)
    return math.ceil(args.num_train_epochs * max(-(-batches // args.gradient_accumulation_steps), 1))


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def run_plan(trainer, recipe) -> list[str]:
    """The lines said before step 1: steps, examples and tokens per step, and the peak memory estimate (with a
    warning when it exceeds the device's memory)."""
    args = trainer.args
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    micro, accum, world = args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size
    examples, mean, longest = micro * accum * world, sum(lengths) / len(lengths), max(lengths)
    steps = planned_steps(args, len(lengths))
    if recipe.train["padding_free"]:
        padded = "no padding (padding_free)"
    elif recipe.train["group_by_length"]:
        padded = "little padding (group_by_length)"
    else:
        padded = f"about {examples * expected_longest(lengths, micro):,.0f} with padding to each batch's longest"
    lines = [
        f"plan: {steps:,} optimizer steps of {examples:,} examples ({micro} per device x {accum} accumulation x "
        f"{world} process{'es' * (world > 1)}); tokens per step: {examples * mean:,.0f} (rows of {mean:.0f} "
        f"tokens on average, {longest:,} at most), {padded}"
    ]
    half = bool(args.bf16 or args.fp16)
    checkpointing = bool(getattr(args, "activation_checkpointing", False))
    est = estimate_peak(
        trainer.model, micro_batch=micro, seq_len=longest, optim=args.optim, half=half, checkpointing=checkpointing
    )
    reach = available_memory()
    lines.append(
        f"memory: peak about {gb(est.total)} GB, an estimate (weights {gb(est.weights)} + gradients "
        f"{gb(est.gradients)} + optimizer {gb(est.optimizer)} + activations {gb(est.activations)} + logits "
        f"{gb(est.logits)}, for {micro} rows of {longest} tokens)"
        + (f"; {gb(reach[0])} GB {reach[1]}" if reach else "")
    )
    if reach and est.total > reach[0]:
        lines.append(
            f"warning: the estimated peak ({gb(est.total)} GB) exceeds the {gb(reach[0])} GB {reach[1]}: lower "
            "train.per_device_train_batch_size (raise gradient_accumulation_steps to keep the effective batch) or "
            "data.max_length, set train.activation_checkpointing: true, or train LoRA instead of full"
        )
    return lines


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 2 * HOUR else f"{seconds / HOUR:.1f} h"


def above_the_bar() -> Callable[..., None]:
    """How the callback says its lines while the training bar is drawn: tqdm lifts the bar, prints, redraws it (as
    transformers prints its loss lines), so a line does not land at the end of the bar's; main process only."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    main = PartialState().is_main_process

    def write(line: str, **kwargs) -> None:
        if main:
            tqdm.write(line)

    return write


class TimeEstimate(TrainerCallback):
    """Time the optimizer steps and say how long the run will take, refined as it goes; warn once when it is
    more than ``limit_s`` (an hour) and name settings that fit.

    Step 1 is left out of the rate: it pays the warm-up (first allocations of every buffer; on CUDA the
    context, kernel selection and caching allocator), which later steps do not. Its time is reported as an
    upper bound meanwhile, so a 1-minute-per-step run says something after its first step. The rate is wall
    time between step ends, so evaluations and checkpoints are counted once they have happened.
    """

    def __init__(
        self,
        say: Callable[..., None],
        limit_s: float = HOUR,
        clock: Callable[[], float] = time.monotonic,
        *,
        full: bool = True,
    ):
        self.say, self.limit_s, self.clock, self.full = say, limit_s, clock, full  # full: a full fine-tune
        self.warned, self.reported = False, set()

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin, self.first_step, self.warm = self.clock(), state.global_step, None

    def on_step_end(self, args, state, control, **kwargs):
        now, total, step = self.clock(), state.max_steps, state.global_step
        if self.warm is None:  # the first step of this process (after a resume: the first one after it)
            self.warm = now
            left = total - step
            if left > 0:
                self.say(
                    f"time: step {step} took {now - self.begin:.1f} s with warm-up; the {left:,} steps left take "
                    f"at most ~{duration((now - self.begin) * left)}, measuring...",
                    flush=True,
                )
            return
        timed = step - self.first_step - 1
        if not self.reported:  # the first estimate: after a few timed steps, or fewer slow ones
            due = timed >= FIRST_REPORT_STEPS or now - self.warm >= FIRST_REPORT_S
        else:  # then again at 10% and 50%, each passed only once
            due = any(f not in self.reported and step >= f * total for f in REPORT_AT)
        if step >= total or not due:
            return
        self.reported.update({"first", *(f for f in REPORT_AT if step >= f * total)})
        rate = (now - self.warm) / timed
        whole = now - self.begin + rate * (total - step)
        over = f"steps {self.first_step + 2}-{step}" if timed > 1 else f"step {step}"
        self.say(
            f"time: {rate:.2f} s/step over {over}: {total:,} steps take about {duration(whole)}, "
            f"{duration(rate * (total - step))} from now",
            flush=True,
        )
        if whole > self.limit_s and not self.warned:
            self.warned = True
            self.say(self.advice(rate, total, whole), flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        """What the estimates were for: the steps' wall time and the measured peak, beside the estimate's line."""
        import torch

        kind = "GPU memory allocated" if torch.cuda.is_available() else "process RSS"
        self.say(
            f"time: {state.global_step - self.first_step:,} steps took {duration(self.clock() - self.begin)}; "
            f"memory: peak {gb(peak_memory_mb() * 2**20)} GB measured ({kind})",
            flush=True,
        )

    def advice(self, rate: float, total: int, whole: float) -> str:
        """The over-an-hour warning, with the step count that fits and the settings that make steps cheaper."""
        fits = max(int(self.limit_s / rate), 1)
        return (
            f"warning: at {rate:.1f} s/step {total:,} steps take {duration(whole)} on this device; "
            f"--set train.max_steps={fits} fits in about {duration(fits * rate)}. A step costs about its tokens: "
            "a smaller train.per_device_train_batch_size or data.max_length, a smaller model"
            + (", or LoRA instead of full fine-tuning" if self.full else "")
            + " make each step cheaper"
        )
