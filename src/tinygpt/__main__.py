"""`python -m tinygpt`: the same command line as the `tinygpt` console script."""

from tinygpt.cli import console

if __name__ == "__main__":
    console()
