"""Recipes: what the scripts and console scripts run, as plain functions of a composed config.

- :mod:`adm.recipes.train`: ``train``, ``train_classifier``, ``train_superres`` (one ``fit`` recipe);
- :mod:`adm.recipes.sample`: ``sample`` (sharded, resumable ``.npz`` sample sets, optionally scored);
- :mod:`adm.recipes.upsample`: ``upsample`` (base samples -> upsampler, or base + upsampler in one run);
- :mod:`adm.recipes.evaluate`: ``evaluate_samples`` (FID / sFID / IS / precision / recall of a sample set)
  and ``make_reference`` (a reference batch from an image folder);
- :mod:`adm.recipes.sweep`: the multirun summary (``SweepSummary``, ``collect_runs``, ``format_summary``);
- :mod:`adm.recipes.demo`: ``run_demo`` (``make demo``);
- :mod:`adm.recipes.compare_samplers`: samplers x guidance kinds on the demo's models;
- :mod:`adm.recipes.runs`: run directories (``resume=DIR``, guarded configs, SLURM job folders).

Entry points (``scripts/*.py``, ``adm-*`` console scripts) live in :mod:`adm.cli`.
"""
