"""Experiments of ``scripts/train_superres.py`` / ``adm-train-superres`` (``experiment=<name>``): the
``experiment/`` folder here is a Hydra config root that ``conf/train_superres.yaml`` adds to its search
path."""
