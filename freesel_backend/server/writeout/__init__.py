"""The write-out: bring Label Studio to the last ranking with writes proportional to what changed.

A ranking (``server.jobs.run_selection``) stores a *target* in Redis: the unlabelled tasks in rank
order, how many are picks, the flags of failed images and near-duplicates, and whether a new
model version is needed. The write-out job compares the target with what Label Studio holds
(recorded in Redis after every request) and writes the difference, at most
``Settings.writeout_step_requests`` requests per job; then it enqueues its continuation at the
end of the write-out queue, so other projects' write-outs take turns. A newer ranking replaces
the target: a running step stops after its current write and the next one plans towards the new
target (a stale queue is never finished first).

- **Full import** (first ranking, a settings change, or scores with no room left): the head's
  predictions are imported under a new model version (a batch whose request timed out is looked
  up in Label Studio before anything is imported again), the head's first flags written and the
  project's queue switched to the version; the other ranked tasks get theirs in place right
  after. The old versions are deleted by a cleanup job (one prediction per request, holding the
  write lock per batch and letting a waiting write-out step go first).
- **In place** (every other ranking, and the rest of a full import): only the first
  ``head_size`` tasks of the queue are kept in exact order. Tasks whose current scores already
  follow the new order (a longest increasing subsequence) keep them; the others get scores
  between their neighbours (one PATCH each). The queue's top (``Settings.top_before_imports``
  tasks) is written first, then ranked tasks without a prediction (new tasks, the rest of a full import)
  are imported behind, in rank order, in large batches, then the rest of the head. Label Studio's /next
  serves the lowest score first, and only tasks with a prediction of the version while any has one.
- **Flags**: "FreeSel pick" on the picks in the head, written before their scores move, head
  first; a pick that left the head keeps its flag while it remains a pick, any other flag on
  a task that left the head is removed after the scores. Failures and
  near-duplicates keep their flags wherever they are; labelled tasks keep theirs.

Modules: ``plan`` (pure: the scores and flags a target needs), ``versions`` (FreeSel's model
versions and the project's sampling), ``context`` (one step's budget and the project's write lock),
``imports`` (prediction imports and their recovery), ``flags`` (flags in task data), ``steps`` (the
write-out job: full import, in place), ``cleanup`` (old versions, disable).
"""
