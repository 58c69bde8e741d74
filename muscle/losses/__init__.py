"""The compatibility losses, one short file per objective (``--objective``):

- :mod:`muscle.losses.token`: the paper's per-token masked KL (docs/muscle.md), teachers' full logits;
- :mod:`muscle.losses.choice`: multiple choice, KL between choice distributions;
- :mod:`muscle.losses.sequence`: generation, cross-entropy on the better teacher's output;
- :mod:`muscle.losses.targets`: the target tokens of a batch and the logits at their positions only
  (shared by ``token`` and ``sequence``).

Every objective takes the same knobs: ``mask`` picks, per unit (token or instance), whether the
target is the old model's behaviour or the new one's; ``temperature``; ``ce_weight`` mixes in the
task's own cross-entropy on the gold answer: L = (1 − w)·L_comp + w·CE.
"""

MASKS = ("paper", "ll-token", "ll-seq", "old-correct", "none")
OBJECTIVES = ("token", "choice", "sequence")
