"""`python -m repspec_utils ...`: the `repspec` command (infra.runner)."""

from repspec_utils.infra.runner import main

if __name__ == "__main__":
    main()
