"""Tasks: what a suite entry is and where its instances come from.

- ``spec.py``: :class:`TaskSpec`, :class:`Instance`, the instance-id and gold-index rules (knows no source);
- ``template_source.py``: the task source of ``kind:`` entries (a data file + Jinja2 templates);
- ``lmeval_source.py``: the task source of ``lm_eval:`` entries (lm-eval's own task definitions);
- ``suite.py``: suite YAML → entries, and the task-source step (``resolve_task``, ``load_instances``).

Imports go one way: ``suite → template_source, lmeval_source → spec``. Nothing here imports torch.
"""
