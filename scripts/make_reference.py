"""`python scripts/make_reference.py folder=IMAGES image_size=N`: the `adm-make-reference` console script."""

from adm.cli import make_reference

if __name__ == "__main__":
    make_reference()
