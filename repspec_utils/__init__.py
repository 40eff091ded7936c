"""repspec: reproduction of 'Spectral regularization for adversarially-robust representation learning'.

Modules, one concept each: data, models, spectral, train, attacks, evaluate, geometry, plotting, reproduce.
"""

__version__ = "0.1.0"
