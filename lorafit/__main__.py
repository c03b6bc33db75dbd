"""`python -m lorafit ...` (and `torchrun ... -m lorafit train RECIPE`): the same CLI as `lorafit`."""

from lorafit.cli import main

if __name__ == "__main__":
    main()
