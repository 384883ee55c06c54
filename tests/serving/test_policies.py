"""The scheduler's policies, without a model: who joins the running rows, who runs whole, and how batch and lock
modes group what waits.

    python -m pytest tests/serving/test_policies.py -q
"""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.serving.adapter_ref import AdapterRef
from peft_gpt2.serving.jobs import Job, Request
from peft_gpt2.serving.policies import BatchPolicy, LockPolicy, StepPolicy

LORA, IA3, PREFIX = AdapterRef("lora"), AdapterRef("ia3", mixes_rows=False), AdapterRef("prefix", whole=True)
GREEDY = GenerationSettings(max_new_tokens=4, stop=[])


def job(adapter: AdapterRef = LORA, rows: int = 1, settings: GenerationSettings = GREEDY) -> Job:
    return Job(Request(("x",) * rows, adapter, settings, 100))


def running(adapter: AdapterRef, rows: int) -> list:
    """Stand-ins for running rows: the policy reads only their jobs' adapters."""
    return [SimpleNamespace(job=job(adapter))] * rows


def test_step_joins_in_arrival_order_while_rows_share_a_group_and_fit():
    waiting = deque([job(AdapterRef()), job(LORA, 2), job(IA3), job(LORA)])
    admitted = StepPolicy(max_batch=4).admit(waiting, running(LORA, 1))
    assert [j.request.adapter for j in admitted.join] == [AdapterRef(), LORA] and not admitted.whole
    assert [j.request.adapter for j in waiting] == [IA3, LORA]  # IA3 waits at the head: the batch drains first


def test_step_lets_nobody_pass_a_job_that_does_not_fit():
    waiting = deque([job(LORA, 3), job(LORA, 1)])
    assert StepPolicy(max_batch=4).admit(waiting, running(LORA, 2)).join == []
    assert len(waiting) == 2


def test_step_runs_a_prompt_learning_job_whole_only_when_nothing_runs():
    first, second = job(PREFIX), job(LORA)
    waiting = deque([first, second])
    assert StepPolicy(4).admit(waiting, running(LORA, 1)).join == [] and len(waiting) == 2
    admitted = StepPolicy(4).admit(waiting, [])
    assert (admitted.whole, admitted.join, list(waiting)) == ([[first]], [second], [])


def test_step_skips_abandoned_jobs_and_counts_rows_for_full():
    abandoned, kept = job(IA3), job(LORA)
    abandoned.future.cancel()
    waiting = deque([abandoned, kept])
    assert StepPolicy(4).admit(waiting, running(LORA, 1)).join == [kept]
    assert StepPolicy(2).full(deque([job(rows=2)])) and not StepPolicy(3).full(deque([job(rows=2)]))


def test_batch_groups_equal_settings_and_a_seeded_job_alone():
    sampled = GenerationSettings(max_new_tokens=4, do_sample=True, stop=[])
    seeded = GenerationSettings(max_new_tokens=4, do_sample=True, seed=3, stop=[])
    jobs = [job(LORA), job(IA3, settings=sampled), job(PREFIX), job(settings=seeded), job(settings=seeded)]
    waiting = deque(jobs)
    policy = BatchPolicy(max_batch=8)
    assert policy.admit(waiting, []).whole == [[jobs[0], jobs[2]]]  # any adapters: generate mixes them
    assert policy.admit(waiting, []).whole == [[jobs[1]]]
    assert policy.admit(waiting, []).whole == [[jobs[3]]]  # a seeded job shares no generate call
    assert policy.admit(waiting, []).whole == [[jobs[4]]] and not waiting
    assert policy.full(deque([job(rows=5), job(IA3, rows=3)])) and not policy.full(deque([job(rows=7)]))


def test_batch_fills_up_to_max_batch_rows_and_lock_takes_one_at_a_time():
    jobs = [job(rows=3), job(rows=2), job(rows=1)]
    waiting = deque(jobs)
    assert BatchPolicy(max_batch=4).admit(waiting, []).whole == [[jobs[0], jobs[2]]]
    waiting = deque(jobs)
    assert [LockPolicy(4).admit(waiting, []).whole for _ in jobs] == [[[j]] for j in jobs]
    assert LockPolicy(4).admit(waiting, []).whole == [] and LockPolicy(4).full(deque(jobs))
