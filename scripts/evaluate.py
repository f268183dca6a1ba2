"""`python scripts/evaluate.py [overrides]`: the `adm-evaluate` console script (`adm.cli`)."""

from adm.cli import evaluate

if __name__ == "__main__":
    evaluate()
