"""`python -m learner ...`: the same command line as `learner ...`."""

from learner.cli import main

if __name__ == "__main__":  # not when a test collector imports the module
    main()
