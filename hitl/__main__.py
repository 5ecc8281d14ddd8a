"""`python -m hitl`: the same CLI as the `hitl` script."""

from hitl.cli import main

if __name__ == "__main__":
    main()
