"""Experiments of ``scripts/train_classifier.py`` / ``adm-train-classifier`` (``experiment=<name>``): the
``experiment/`` folder here is a Hydra config root that ``conf/train_classifier.yaml`` adds to its search
path."""
