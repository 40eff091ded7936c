"""repspec: reproduction of 'Spectral regularization for adversarially-robust representation learning'.

Importing the package imports every plug-in module, so that every dataset, model kind, method (penalty),
objective and augmentation is in `repspec_utils.registry` whatever is imported first. docs/DESIGN.md lists the
modules; docs/SPEC.md is the method and experiment spec the code cites as "SPEC §N".
"""

__version__ = "0.1.0"

# the plug-in modules: each registers its entries in `registry` when imported
from . import data, models, train, authors, barlow, transfer, adversarial  # noqa: E402,F401  (order: dependencies first)
