"""`python scripts/demo.py [overrides]`: the `adm-demo` console script (`adm.cli`)."""

from adm.cli import demo

if __name__ == "__main__":
    demo()
