"""Rollouts: the engine that walks a selection of machines through a sequence of steps in
batches (rolling upgrades, and rack provisioning on the same engine).

* :mod:`.planner` — pure: machines, labels and a batch policy in, ordered batches out.
* :mod:`.decide`  — pure: the persisted state of a rollout in, what to do next out.
"""
