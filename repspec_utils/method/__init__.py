"""The method: σ_max of linear and convolutional layers (`spectral`) and every spectral penalty, each defined once (`penalties`)."""
