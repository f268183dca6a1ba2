"""Experiments of ``scripts/train.py`` / ``adm-train`` (``experiment=<name>``): the ``experiment/`` folder
here is a Hydra config root that ``conf/train.yaml`` adds to its search path, so each script has its own
names."""
