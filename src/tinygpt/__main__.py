"""`python -m tinygpt`: the same command line as the `tinygpt` console script."""

from tinygpt.cli import main

if __name__ == "__main__":
    main()
