"""repspec: reproduction of 'Spectral regularization for adversarially-robust representation learning'.

Importing the package is light: the plug-in modules (every dataset, model kind, method, objective and augmentation)
are imported on the first read of a `registry` table (`registry.load_plugins`), and the submodules on first
attribute access (`repspec_utils.training.loop`), so the command line's --help and the analysis of committed tables do not
load torch. docs/DESIGN.md lists the modules; docs/SPEC.md is the method and experiment spec the code cites as
"SPEC §N".
"""

import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    """`repspec_utils.<submodule>` imported on first use (PEP 562)."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
